"""Publishing to the HF Hub: the export folder, the model card, the upload."""
