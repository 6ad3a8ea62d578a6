"""Text as a modality: a pretrained sentence encoder (BERT family, e.g. all-MiniLM-L6-v2 shipped in a pip
package) split into stages, tables and folders of labelled texts, and the frozen pass the activation
cache stores. It plugs into the core through :class:`graft.text.modality.TextModality`."""
