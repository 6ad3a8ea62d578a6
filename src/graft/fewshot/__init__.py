"""Few-shot transfer (``--mode fewshot``): contrastive fine-tuning of the encoder's top layers from a
handful of labelled examples per class, then a new head on the tuned features (SetFit's recipe),
on the core's one loop and activation cache. Modality-free: text is where it matters most."""
