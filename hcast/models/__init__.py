"""hcast models, in timm's style. Importing this package registers them with timm."""
