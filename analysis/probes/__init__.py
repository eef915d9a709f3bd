"""Probes on trained ViTs: attention, attention distance, CKA, filters, attributions.

Each probe returns data (tensors, arrays, DataFrames); figures live in analysis.plots.maps.
"""

from analysis.probes.attention import (
    capture_attention,
    class_token_attention,
    explicit_attention,
    gradient_rollout,
    record_attention,
    rollout_maps,
    rollout_matrix,
)
from analysis.probes.attributions import integrated_gradients, occlusion, smoothgrad, stem_gradcam
from analysis.probes.distance import attention_distance, mean_attention_distance
from analysis.probes.filters import FilterPCA, filter_pca, first_layer_filters, position_similarity
from analysis.probes.layout import TokenLayout, token_layout
from analysis.probes.similarity import MinibatchCKA, block_features, cka_between, cka_matrix, linear_cka

__all__ = [
    "FilterPCA",
    "MinibatchCKA",
    "TokenLayout",
    "attention_distance",
    "block_features",
    "capture_attention",
    "cka_between",
    "cka_matrix",
    "class_token_attention",
    "explicit_attention",
    "filter_pca",
    "first_layer_filters",
    "gradient_rollout",
    "integrated_gradients",
    "linear_cka",
    "mean_attention_distance",
    "occlusion",
    "position_similarity",
    "record_attention",
    "rollout_maps",
    "rollout_matrix",
    "smoothgrad",
    "stem_gradcam",
    "token_layout",
]
