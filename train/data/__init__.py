"""ToyWorld: procedural scenes, masks, captions and referring expressions (numpy + pillow only)."""
