"""The multimodal acoustic model: one module per concept, composed in polyvox.models.acoustic."""
