"""Evaluation lab: DAVIS J&F, label propagation, unsupervised segmentation scores, k-NN.

Modules::

    metrics       J, F (DAVIS conventions), per-sequence and dataset J&F, grid <-> frame label maps
    propagation   semi-supervised VOS by label propagation (DINO's protocol), streaming
    segmentation  cluster-to-class matching (Hungarian, many-to-one), mIoU, attention/object masks
    discovery     J, CorLoc and stability of discovered objects (LOST, TokenCut, ...)
    knn           weighted k-NN classification of features (DINO's eval_knn)

Importing this package imports torch and numpy only (scipy is imported by the Hungarian matching
when it runs).
"""

from labkit.eval.knn import KNNResult, knn_classify
from labkit.eval.metrics import (
    SequenceScores,
    davis_frame_scores,
    davis_sequence_scores,
    davis_summary,
    f_measure,
    frame_to_grid,
    grid_to_frame,
    jaccard,
    per_object_table,
    resize_nearest,
    seg2bmap,
)
from labkit.eval.segmentation import (
    ClusterScores,
    ConfusionAccumulator,
    SegmentationScore,
    attention_mask_scores,
    cluster_scores,
    confusion_matrix,
    hungarian_match,
    hungarian_miou,
    iou_from_mapping,
    kmeans_miou,
    many_to_one_match,
    mask_scores,
    object_mask_scores,
    overcluster_miou,
)
from labkit.propagation import (
    LabelPropagator,
    PropagatedFrame,
    iter_propagate_labels,
    labels_from_soft,
    propagate_labels,
    propagation_step,
)

__all__ = [
    "KNNResult",
    "knn_classify",
    "SequenceScores",
    "davis_frame_scores",
    "davis_sequence_scores",
    "davis_summary",
    "f_measure",
    "frame_to_grid",
    "grid_to_frame",
    "jaccard",
    "per_object_table",
    "resize_nearest",
    "seg2bmap",
    "LabelPropagator",
    "PropagatedFrame",
    "iter_propagate_labels",
    "labels_from_soft",
    "propagate_labels",
    "propagation_step",
    "ClusterScores",
    "ConfusionAccumulator",
    "SegmentationScore",
    "attention_mask_scores",
    "cluster_scores",
    "confusion_matrix",
    "hungarian_match",
    "hungarian_miou",
    "iou_from_mapping",
    "kmeans_miou",
    "many_to_one_match",
    "mask_scores",
    "object_mask_scores",
    "overcluster_miou",
]
