"""What the training side's entry points share: config resolvers and schemas, the project root,
instantiating from config, logs, progress, devices and experiment tracking."""
