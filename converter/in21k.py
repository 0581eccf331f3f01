"""EfficientNetV2's ImageNet-21k checkpoints: their ImageNet-1k classes, and a 1k head taken from the 21k head.

google/automl efficientnetv2 (6a54c87) ships no 21k -> 1k class map. What its files allow: the
ImageNet-1k classes by WordNet synset (g3doc/imagenet1k_labels.txt, the order of
converter/data/imagenet_classes.txt) and the 21k outputs by synset (converter/data/
imagenet21k_labels.txt, whose header says where the 21843-output order comes from); matching the
synsets finds 999 of the 1000 classes among the 21k outputs. n04399382 ('teddy, teddy bear', class
850) is not one of the 21843 outputs (automl's 21842-line list has it, in place of two outputs).
"""
from __future__ import annotations

from typing import List

from .errors import ConversionError
from .predict import IMAGENET21K_CLASSES, imagenet21k_classes, imagenet_classes
from .training import reset_classifier

ABSENT = -1  # an ImageNet-1k class that is not among the 21k outputs


def imagenet1k_in_21k() -> List[int]:
    """For each ImageNet-1k class (converter/data/imagenet_classes.txt, the order of google/automl
    efficientnetv2/g3doc/imagenet1k_labels.txt at 6a54c87), the EfficientNetV2 -21k output of the
    same WordNet synset (converter/data/imagenet21k_labels.txt); ABSENT (-1) where none is:
    n04399382 'teddy, teddy bear' (class 850) is not one of the 21843 outputs."""
    where = {syn: i for i, (syn, _) in enumerate(imagenet21k_classes())}
    return [where.get(syn, ABSENT) for syn, _ in imagenet_classes()]


def to_imagenet1k(model):
    """A -21k model (21843 outputs) with the ImageNet-1k head taken from its 21k head by synset
    (:func:`imagenet1k_in_21k`): 999 of the 1000 rows are the 21k rows; the teddy-bear row is new
    (official dense init). The outputs are then ImageNet-1k's (sigmoid scores of the 21k training)."""
    if model.classifier.out_features != IMAGENET21K_CLASSES:
        raise ConversionError(f"to_imagenet1k takes a model with the {IMAGENET21K_CLASSES}-class ImageNet-21k head; "
                              f"this one has {model.classifier.out_features} outputs")
    return reset_classifier(model, len(imagenet1k_in_21k()), keep=imagenet1k_in_21k())
