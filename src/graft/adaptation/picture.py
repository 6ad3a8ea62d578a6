"""The 2-D picture of adaptation: t-SNE maps of source and target features before and after, coloured
by domain and by class (target classes only when the target folder has them, for the eye alone)."""

from __future__ import annotations

import numpy as np

from graft.core.plots import pyplot, save_figure


def embed_2d(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, *features.shape), random_state=seed).fit_transform(features)
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(reduced)


def domain_picture(
    before: np.ndarray,
    after: np.ndarray,
    domains: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    path,
    *,
    seed: int,
    title: str,
) -> None:
    """``before``/``after``: feature rows; ``domains``: 0 source, 1 target; ``labels``: class or -1."""
    figure, axes = pyplot().subplots(2, 2, figsize=(10, 9), layout="constrained")
    colours = pyplot().get_cmap("tab10")
    for row, (name, features) in enumerate((("before", before), ("after", after))):
        points = embed_2d(features, seed)
        by_domain, by_class = axes[row]
        for domain, label, colour in ((0, "source", "tab:blue"), (1, "target", "tab:orange")):
            chosen = domains == domain
            by_domain.scatter(*points[chosen].T, s=6, alpha=0.6, color=colour, label=label)
        by_domain.set(title=f"{name}: by domain", xticks=[], yticks=[])
        by_domain.legend(markerscale=3)
        unknown = labels < 0
        if unknown.any():
            by_class.scatter(*points[unknown].T, s=6, alpha=0.3, color="lightgrey", label="unlabelled")
        for index, name_ in enumerate(classes):
            for domain, marker in ((0, "o"), (1, "x")):
                chosen = (labels == index) & (domains == domain)
                by_class.scatter(
                    *points[chosen].T,
                    s=8,
                    alpha=0.7,
                    marker=marker,
                    color=colours(index % 10),
                    label=name_ if domain == 0 else None,
                )
        by_class.set(title=f"{name}: by class (o source, x target)", xticks=[], yticks=[])
        by_class.legend(markerscale=2, fontsize="small")
    figure.suptitle(title)
    save_figure(figure, path)
