"""S3Gen's flow as one traceable module: speech tokens + speaker -> mel, for ONNX.

:class:`FlowGraph` runs what ``S3Gen.flow_inference(..., finalize=True)`` runs, with Chatterbox's
own modules and weights (token embedding, conformer encoder, projection, CFM estimator), in the
calling convention of the community ``conditional_decoder.onnx`` graphs: ``speech_tokens`` holds
the reference's tokens first, then the ones to speak; ``speaker_features`` is the reference's mel
``(B, frames, 80)``; ``speaker_embeddings`` its CAMPPlus x-vector ``(B, 192)``. The mel of the
spoken part ``(B, 80, 2 * tokens - frames)`` comes out.

Three things differ from Chatterbox's code, none in what is computed:
- the solver's doubled (CFG) batch is built with ``cat``, not written into zeroed buffers by
  slice assignment (which the exporter cannot follow);
- every row is as long as the tensor (the contract has no lengths input), so the masks are ones
  built from shapes, not from ``make_pad_mask(...).item()``;
- the noise is drawn inside (``randn_like``, one draw over the whole mel, reference part
  included, as ``CausalConditionalCFM.forward`` draws it), or given as ``noise`` ``(B, 80, 2 *
  tokens)`` by the test-only variant that compares the graph with PyTorch.

Token ids outside ``0 .. vocab_size - 1`` are sent to ``vocab_size`` before the embedding
look-up, so that a negative id fails the look-up as a too-large one does (ONNX's ``Gather``
would otherwise wrap it around silently); :data:`TOKEN_LOOKUP` names that node in the graph,
and so in ONNX Runtime's error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The name of the token look-up node in an exported graph: ONNX Runtime's error for a bad id names it
TOKEN_LOOKUP = "speech_tokens_must_be_0_to_6560"


class FlowGraph(nn.Module):
    """``flow`` (Chatterbox's ``CausalMaskedDiffWithXvec``) at ``steps`` Euler steps; ``meanflow``
    as Chatterbox Turbo runs it (no CFG, linear time), else the CFM with CFG and the cosine schedule."""

    def __init__(self, flow: nn.Module, steps: int, meanflow: bool) -> None:
        super().__init__()
        self.flow = flow
        self.meanflow = meanflow
        self.steps = steps
        self.vocab_size = int(flow.vocab_size)
        self.cfg_rate = float(flow.decoder.inference_cfg_rate)
        # the time points as Chatterbox computes them (float32 linspace, then the cosine schedule)
        span = torch.linspace(0, 1, steps + 1, dtype=torch.float32)
        if not meanflow and flow.decoder.t_scheduler == "cosine":
            span = 1 - torch.cos(span * 0.5 * torch.pi)
        self.register_buffer("t_span", span, persistent=False)

    def forward(
        self, speech_tokens: Tensor, speaker_embeddings: Tensor, speaker_features: Tensor, noise: Tensor | None = None
    ) -> Tensor:
        flow = self.flow
        spks = flow.spk_embed_affine_layer(F.normalize(speaker_embeddings, dim=1))
        ids = torch.where((speech_tokens < 0) | (speech_tokens >= self.vocab_size), self.vocab_size, speech_tokens)
        lengths = torch.ones_like(speech_tokens).sum(dim=1)
        h, _ = flow.encoder(flow.input_embedding(ids), lengths)
        mu = flow.encoder_proj(h).transpose(1, 2)  # (B, 80, 2 * tokens)
        prompt = speaker_features.shape[1]
        cond = torch.cat([speaker_features.transpose(1, 2), torch.zeros_like(mu)[:, :, prompt:]], dim=2)
        mask = torch.ones_like(mu[:, :1])
        x = torch.randn_like(mu) if noise is None else noise
        estimator = flow.decoder.estimator
        for i in range(self.steps):
            t, r = self.t_span[i : i + 1], self.t_span[i + 1 : i + 2]
            if self.meanflow:
                dxdt = estimator(x, mask=mask, mu=mu, t=t, spks=spks, cond=cond, r=r)
            else:  # classifier-free guidance: the conditioned half, then the unconditioned one
                both = estimator(
                    torch.cat([x, x]),
                    mask=torch.cat([mask, mask]),
                    mu=torch.cat([mu, torch.zeros_like(mu)]),
                    t=t.expand(2 * x.shape[0]),
                    spks=torch.cat([spks, torch.zeros_like(spks)]),
                    cond=torch.cat([cond, torch.zeros_like(cond)]),
                )
                dxdt, unconditioned = both.chunk(2)
                dxdt = (1.0 + self.cfg_rate) * dxdt - self.cfg_rate * unconditioned
            x = x + (r - t) * dxdt
        return x[:, :, prompt:]


def small_flow(meanflow: bool = False, width: int = 64, seed: int = 0) -> nn.Module:
    """Chatterbox's flow classes made small (one conformer block with a narrow feed-forward, one
    estimator block of each kind at ``width`` channels): the graph S3Gen's flow exports to, in
    seconds. The token table, the encoder's width (its look-ahead and upsampling layers are built
    at 512), the speaker projection and every interface keep S3Gen's sizes."""
    from chatterbox.models.s3gen.configs import CFM_PARAMS
    from chatterbox.models.s3gen.decoder import ConditionalDecoder
    from chatterbox.models.s3gen.flow import CausalMaskedDiffWithXvec
    from chatterbox.models.s3gen.flow_matching import CausalConditionalCFM
    from chatterbox.models.s3gen.transformer.upsample_encoder import UpsampleConformerEncoder

    heads = max(1, width // 32)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = UpsampleConformerEncoder(
            input_size=512, output_size=512, attention_heads=8, linear_units=2 * width, num_blocks=1,
            input_layer="linear", pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn",
            normalize_before=True, use_cnn_module=False, macaron_style=False,
        )  # fmt: skip
        estimator = ConditionalDecoder(
            in_channels=320, out_channels=80, causal=True, channels=[width], dropout=0.0, attention_head_dim=32,
            n_blocks=1, num_mid_blocks=1, num_heads=heads, act_fn="gelu", meanflow=meanflow,
        )  # fmt: skip
        decoder = CausalConditionalCFM(spk_emb_dim=80, cfm_params=CFM_PARAMS, estimator=estimator)
        flow = CausalMaskedDiffWithXvec(encoder=encoder, decoder=decoder)
    return flow.eval().requires_grad_(False)
