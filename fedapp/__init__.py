"""fedapp: Byzantine-robust, private, compressed federated learning on Flower."""
