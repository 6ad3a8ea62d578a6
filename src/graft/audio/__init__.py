"""Sound as a modality: folders of WAV/FLAC clips, a pretrained speech embedding, wake words from
synthetic voices (:mod:`graft.audio.wakeword`) and streaming detection (:mod:`graft.audio.stream`)."""
