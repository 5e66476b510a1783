"""Wander datasets: one row per example, one column per modality plus the target ``label``.

Columns (:func:`columns`):

* one per modality, named as the backbone names it: float32 ``[seq_len, dim]`` features for an
  ``embeds`` input (:func:`feature_spec`; synthetic data, MMSA's ``text`` / ``audio`` /
  ``vision``), or what its encoder reads (UPMC-Food101: ``image`` uint8 ``[3, S, S]`` pixel
  values, ``text`` int64 ``[L]`` input ids);
* :data:`LABEL`, the target, typed by the head (:data:`LABEL_DTYPES`): an int64 class id for
  classification, a float32 score for regression (CMU-MOSI's range is ``[-3, 3]``), int64 0/1
  ``[num_labels]`` for multilabel (IEMOCAP: one binary target per emotion). Retrieval
  rows have none: row i of the query modality (``model.query_modality``; :data:`SYNTH_QUERY` in
  synthetic data) describes row i of the others.

A dataset of head ``h`` is written for the task ``TASKS[h]`` (``wander.<head>``); its manifest's
``meta`` names the ``head`` and the ``modalities`` (classification adds ``num_classes``,
multilabel ``num_classes``, the number of binary targets, and their ``labels``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from polymodal.shards import ColumnSpec

HEADS = ("classification", "regression", "retrieval", "multilabel")
HeadKind = Literal["classification", "regression", "retrieval", "multilabel"]
#: the task that reads a dataset of each head
TASKS = {head: f"wander.{head}" for head in HEADS}
#: the target column, and its dtype per head (retrieval has none)
LABEL = "label"
LABEL_DTYPES = {"classification": "int64", "regression": "float32", "multilabel": "int64"}
#: the query (text) modality of synthetic retrieval data
SYNTH_QUERY = "text"


def check_head(head: str) -> None:
    if head not in TASKS:
        raise ValueError(f"unknown head {head!r}; choose one of {sorted(TASKS)}")


def feature_spec(shape: Sequence[int]) -> ColumnSpec:
    """The column of an ``embeds`` modality: float32 ``[seq_len, dim]``."""
    from polymodal.shards import ColumnSpec

    return ColumnSpec(dtype="float32", shape=[int(d) for d in shape])


def columns(head: str, modalities: Mapping[str, ColumnSpec], num_labels: int | None = None) -> dict[str, ColumnSpec]:
    """Column specs of a ``head`` dataset: ``modalities`` (name -> spec), then :data:`LABEL`
    when the head has a target: a scalar, or ``[num_labels]`` 0/1 targets for ``multilabel``."""
    from polymodal.shards import ColumnSpec

    check_head(head)
    if (head == "multilabel") != (num_labels is not None):
        raise ValueError(f"num_labels is required for the multilabel head and only for it (head {head!r}, "
                         f"num_labels {num_labels!r})")
    out = dict(modalities)
    if head in LABEL_DTYPES:
        out[LABEL] = ColumnSpec(dtype=LABEL_DTYPES[head], shape=[] if num_labels is None else [int(num_labels)])
    return out
