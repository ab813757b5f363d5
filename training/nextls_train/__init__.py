"""nextls_train: the offline NExT self-training pipeline. It imports the runtime from `nextls`."""
