"""Server side: split model training, GPU/CPU inference service and alerting (torch)."""
