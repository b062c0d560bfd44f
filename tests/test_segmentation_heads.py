"""The dense heads equal the original code's on the same features and weights
(``tests/reference_seg_heads.py``), on CAST features of scikit-image photos."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data as skdata
from skimage.transform import resize

import hcast  # noqa: F401
from hcast.models.segmentation_heads import (
    SegSortRetrieval,
    SoftmaxClassifier,
    SuperpixMaskTransformer,
    knn_vote,
    region_prototypes,
)
from hcast.ops import superpixels
import reference_seg_heads as ref

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def cast_outputs():
    """cast_seg_tiny features, superpixels and assignment logits of three photos."""
    imgs = [resize(f(), (64, 64), anti_aliasing=True) for f in (skdata.astronaut, skdata.coffee, skdata.chelsea)]
    x = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() - MEAN) / STD
    segments = superpixels(x, num_segments=150, method="seeds")
    segments[0, :3, :3] = int(segments.max()) + 3  # ids 1 and 2 above the others' max own no pixel
    torch.manual_seed(0)
    model = timm.create_model("cast_seg_tiny").eval()
    with torch.no_grad():
        out = model.forward_stages(x, segments, full_last_pool=True)
        features = model.fusion(out["stage_tokens"], out["class_tokens"], out["logits"][:3])[:, 1:]
    return features, segments, out["logits"]


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=gen) * 0.3)


def test_softmax_classifier_equals_spml(cast_outputs):
    features, segments, _ = cast_outputs
    head = SoftmaxClassifier(features.shape[-1], 21)
    _randomise(head, 0)
    original = ref.SoftmaxClassifier(features.shape[-1], 21)
    original.load_state_dict(head.state_dict(), strict=True)
    embedding = ref.pixel_map(features, segments)
    for mode in ("eval", "train"):  # train: BatchNorm statistics over pixels
        getattr(head, mode)(), getattr(original, mode)()
        got, want = head(features, segments), original(embedding)
        assert got.shape == want.shape == (3, 21, 64, 64)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    bn, bn_ref = head.semantic_classifier[1], original.semantic_classifier[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=1e-4, atol=1e-5)


def test_mask_transformer_equals_segmenter(cast_outputs):
    features, segments, _ = cast_outputs
    dim = features.shape[-1]
    head = SuperpixMaskTransformer(150, dim, n_layers=2).eval()
    _randomise(head, 1)
    original = ref.SuperpixMaskTransformer(150, dim, 2, dim // 64, dim, 4 * dim).eval()
    original.load_state_dict(head.state_dict(), strict=True)
    with torch.no_grad():
        got, want = head(features, segments), original(features, segments, segments.shape[-2:])
    assert got.shape == (3, 150, 64, 64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_knn_vote_hand_computed():
    memory = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([3, 3, 1, 0, 1])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]])
    # query 0: similarities 1, .8, 0, -1, .6 -> top-3 labels 3, 3, 1 -> 3
    # query 1: 0, .6, 1, 0, .8 -> top-3 labels 1, 1, 3 -> 1
    # query 2: -.6, -.12, .8, .6, .28 -> top-3 labels 1, 0, 1 -> 1; top-2: 1, 0 tie -> 0
    assert knn_vote(queries, memory, labels, k=3).tolist() == [3, 1, 1]
    assert knn_vote(queries, memory, labels, k=2).tolist() == [3, 1, 0]
    protos = region_prototypes(torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 5.0]]), torch.tensor([0, 0, 1]))
    torch.testing.assert_close(protos, torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5], [0.0, 1.0]]))


def test_segsort_retrieval_equals_spml(cast_outputs):
    features, segments, logits = cast_outputs
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (3, 8, 8), generator=gen).repeat_interleave(8, 1).repeat_interleave(8, 2)
    labels[:, :8] = 255
    retrieval = SegSortRetrieval(k=5)
    retrieval.add(features[:2], segments[:2], [lg[:2] for lg in logits], labels[:2])
    got = retrieval(features[2:], segments[2:], [lg[2:] for lg in logits])

    # The original: prototypes over pixel embeddings of each image's regions, majority labels,
    # 255 dropped; then the query's regions voted by argsort top-k.
    memory, memory_labels = [], []
    for b in range(2):
        emb = torch.nn.functional.normalize(ref.pixel_map(features[b:b + 1], segments[b:b + 1]), dim=1)
        emb = emb.permute(0, 2, 3, 1).reshape(-1, features.shape[-1])
        cluster = ref.cluster_index([lg[b:b + 1] for lg in logits], segments[b:b + 1])
        memory.append(ref.calculate_prototypes_from_labels(emb, cluster))
        memory_labels.append(ref.find_majority_label(labels[b], cluster))
    memory, memory_labels = torch.cat(memory), torch.cat(memory_labels)
    keep = memory_labels != 255
    memory, memory_labels = memory[keep], memory_labels[keep]
    torch.testing.assert_close(retrieval.memory, memory, rtol=1e-4, atol=1e-5)
    assert torch.equal(retrieval.memory_labels, memory_labels)
    emb = torch.nn.functional.normalize(ref.pixel_map(features[2:], segments[2:]), dim=1)
    emb = emb.permute(0, 2, 3, 1).reshape(-1, features.shape[-1])
    cluster = ref.cluster_index([lg[2:] for lg in logits], segments[2:])
    protos = ref.calculate_prototypes_from_labels(emb, cluster)
    region_label = ref.majority_label_from_topk(ref.top_k_labels(protos, memory, memory_labels, 5))
    want = region_label[cluster].view(1, 64, 64)
    assert torch.equal(got, want)
    assert len(want.unique()) > 1
