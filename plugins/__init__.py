"""mch's built-in plugins: models, attribute datasets and analyses, catalogued in registry.yaml."""
