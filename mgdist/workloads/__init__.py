"""Built-in workloads, each written with the public model contract only (docs/models.md):
quantile regression (the flagship), regression (MSE, Huber), classification (binary and
multiclass), and the synthetic data whose answers are known."""
