"""`sae train`: SAE variants trained on rows streamed from an activation store."""
