"""edgeseg train: ToyWorld data, CLIP (open_clip) and LSeg models, training loops, checkpoints."""
