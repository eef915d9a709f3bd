"""Probes on any model: attention, attention distance, CKA, linear probes, residual-stream strength,
filters, attributions.

Every probe takes a model or any source analysis.runs.as_model turns into one (a run folder, a
suite preset or timm model name, with checkpoint_path for weights), reads layers through timm's
forward_intermediates (analysis.probes.features) and returns data (tensors, arrays, DataFrames);
figures live in analysis.plots.maps and analysis.plots.representations.
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
from analysis.probes.distance import (
    attention_distance,
    distance_vs_data,
    local_heads,
    mean_attention_distance,
    uniform_distance,
)
from analysis.probes.features import Layer, block_features, read_layers
from analysis.probes.filters import FilterPCA, filter_pca, first_layer_filters, position_similarity
from analysis.probes.layout import TokenLayout, first_conv, token_layout
from analysis.probes.linear import linear_probes, ridge_probe
from analysis.probes.residual import residual_strength
from analysis.probes.similarity import MinibatchCKA, cka_between, cka_matrix, cka_pairs, linear_cka
from analysis.runs import as_model

__all__ = [
    "FilterPCA",
    "Layer",
    "MinibatchCKA",
    "TokenLayout",
    "as_model",
    "attention_distance",
    "block_features",
    "capture_attention",
    "cka_between",
    "cka_matrix",
    "cka_pairs",
    "class_token_attention",
    "distance_vs_data",
    "explicit_attention",
    "filter_pca",
    "first_conv",
    "first_layer_filters",
    "gradient_rollout",
    "integrated_gradients",
    "linear_cka",
    "linear_probes",
    "local_heads",
    "mean_attention_distance",
    "occlusion",
    "position_similarity",
    "read_layers",
    "record_attention",
    "residual_strength",
    "ridge_probe",
    "rollout_maps",
    "rollout_matrix",
    "smoothgrad",
    "stem_gradcam",
    "token_layout",
    "uniform_distance",
]
