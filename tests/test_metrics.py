"""Metrics against hand-computed cases: ARI (known values, permutation, trivial partitions, background),
confusion matrices, Hungarian mapping, mACC / mIoU, clustering accuracy, and bad input."""
import pytest
import torch

from dtifast.metrics import (ari, clustering_accuracy, confusion_matrix, hungarian_mapping,
                             scores_from_confusion, semantic_scores)


def T(x):
    return torch.tensor(x, dtype=torch.int64)


class TestARI:
    # Values checked by hand with the contingency-table formula (they match scikit-learn's documented
    # adjusted_rand_score examples).
    @pytest.mark.parametrize("true, pred, expected", [
        ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),
        ([0, 0, 1, 2], [0, 0, 1, 1], 4 / 7),
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
    ])
    def test_known_values(self, true, pred, expected):
        assert float(ari(T([true]), T([pred]))) == pytest.approx(expected, abs=1e-12)

    def test_hand_computed_table(self):
        # n_ij = [[2, 1], [0, 3]]: Σ C(n_ij) = 1 + 0 + 0 + 3 = 4; a = (3, 3) -> 6; b = (2, 4) -> 7;
        # C(6) = 15, E = 6 * 7 / 15 = 2.8, max = 6.5 -> ARI = 1.2 / 3.7.
        true = T([[0, 0, 0, 1, 1, 1]])
        pred = T([[0, 0, 1, 1, 1, 1]])
        assert float(ari(true, pred)) == pytest.approx(1.2 / 3.7, abs=1e-12)

    def test_perfect_and_permutation_on_images(self):
        g = torch.Generator().manual_seed(0)
        true = torch.randint(0, 4, (3, 7, 9), generator=g)
        perm = T([3, 0, 2, 1])
        assert torch.equal(ari(true, true, reduction="none"), torch.ones(3, dtype=torch.float64))
        assert float(ari(true, perm[true])) == pytest.approx(1.0)
        # Arbitrary (large, sparse) label values give the same score.
        assert float(ari(true, true * 100 + 7)) == pytest.approx(1.0)

    def test_all_one_cluster(self):
        true = T([[[0, 0, 1], [1, 2, 2]]])
        pred = torch.zeros_like(true)
        assert float(ari(true, pred)) == pytest.approx(0.0)
        # Both labellings one cluster: 0/0, scored 1 as in upstream.
        assert float(ari(pred, pred)) == 1.0

    def test_background_ignored(self):
        # Background (0) pixels are predicted as part of object 1; with the background dropped the
        # foreground split is perfect, with it the score drops.
        true = T([[[0, 0, 1, 1], [0, 0, 2, 2]]])
        pred = T([[[1, 1, 1, 1], [1, 1, 2, 2]]])
        assert float(ari(true, pred, ignore_background=True)) == pytest.approx(1.0)
        full = float(ari(true, pred))
        assert full < 1.0
        # Hand value of the full ARI: n_ij rows (bkg, 1, 2) cols (1, 2): [[4,0],[2,0],[0,2]];
        # Σ C(n_ij) = 6 + 1 + 1 = 8; a = (4, 2, 2) -> 6 + 1 + 1 = 8; b = (6, 2) -> 15 + 1 = 16;
        # C(8) = 28; E = 8 * 16 / 28; max = 12.
        e = 8 * 16 / 28
        assert full == pytest.approx((8 - e) / (12 - e), abs=1e-12)

    def test_per_image_average(self):
        true = torch.stack([T([[0, 0], [1, 1]]), T([[0, 0], [1, 1]])])
        pred = torch.stack([T([[0, 0], [1, 1]]), T([[0, 1], [0, 1]])])
        per = ari(true, pred, reduction="none")
        assert per.tolist() == pytest.approx([1.0, -0.5])
        assert float(ari(true, pred)) == pytest.approx(0.25)

    def test_bad_input(self):
        with pytest.raises(TypeError, match="labels_true must have dtype"):
            ari(torch.zeros(1, 2, 2), T([[[0, 0], [0, 0]]]))
        with pytest.raises(ValueError, match="same shape"):
            ari(T([[0, 1]]), T([[0, 1, 2]]))
        with pytest.raises(ValueError, match="non-negative"):
            ari(T([[0, -1]]), T([[0, 1]]))
        with pytest.raises(ValueError, match="reduction"):
            ari(T([[0, 1]]), T([[0, 1]]), reduction="sum")
        with pytest.raises(TypeError, match="torch.Tensor"):
            ari([[0, 1]], T([[0, 1]]))


class TestSemantic:
    def test_confusion_matrix_by_hand(self):
        true = T([0, 0, 1, 1, 2, 2])
        pred = T([0, 1, 1, 1, 0, 2])
        expected = T([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
        assert torch.equal(confusion_matrix(true, pred, 3, 3), expected)

    def test_scores_hand_computed(self):
        # Ground truth rows, prediction columns (clusters in another order than classes):
        #   cluster:   0   1   2
        # class 0   [  1,  8,  1]
        # class 1   [  6,  0,  0]
        # class 2   [  0,  2,  2]
        # Hungarian: cluster 1 -> class 0 (8), cluster 0 -> class 1 (6), cluster 2 -> class 2 (2).
        conf = T([[1, 8, 1], [6, 0, 0], [0, 2, 2]])
        out = scores_from_confusion(conf)
        assert out["mapping"].tolist() == [1, 0, 2]
        acc = [8 / 10, 6 / 6, 2 / 4]
        iou = [8 / (10 + 10 - 8), 6 / (6 + 7 - 6), 2 / (4 + 3 - 2)]
        assert out["acc_per_class"] == pytest.approx(acc)
        assert out["iou_per_class"] == pytest.approx(iou)
        assert out["macc"] == pytest.approx(sum(acc) / 3)
        assert out["miou"] == pytest.approx(sum(iou) / 3)
        assert out["global_acc"] == pytest.approx(16 / 20)

    def test_semantic_scores_on_maps(self):
        true = T([[[0, 0, 1], [2, 2, 1]], [[0, 1, 1], [0, 2, 2]]])
        perm = T([5, 2, 0])  # background -> 5, class 1 -> 2, class 2 -> 0; clusters 1, 3, 4 unused
        out = semantic_scores(true, perm[true], n_classes=3)
        assert out["macc"] == 1.0 and out["miou"] == 1.0
        assert out["confusion"].shape == (3, 6)
        assert out["mapping"][[5, 2, 0]].tolist() == [0, 1, 2]

    def test_more_clusters_than_classes_count_as_errors(self):
        # Class 1 is split over clusters 1 and 2; only one can match it.
        true = T([[0, 0, 1, 1, 1, 1]])
        pred = T([[0, 0, 1, 1, 1, 2]])
        out = semantic_scores(true, pred, n_classes=2)
        assert out["acc_per_class"] == pytest.approx([1.0, 0.75])
        assert out["iou_per_class"] == pytest.approx([1.0, 0.75])

    def test_absent_class_scores_zero(self):
        # Class 2 appears in neither map: 0/0 scores 0 and still counts in the average.
        true = T([[0, 1, 1, 0]])
        out = semantic_scores(true, true, n_classes=3)
        assert out["iou_per_class"] == [1.0, 1.0, 0.0]
        assert out["miou"] == pytest.approx(2 / 3)

    def test_hungarian_rectangular(self):
        conf = T([[5, 0, 1, 0], [0, 0, 0, 7]])
        assert hungarian_mapping(conf).tolist() == [0, -1, -1, 1]

    def test_bad_input(self):
        with pytest.raises(ValueError, match="labels_true holds label 3"):
            semantic_scores(T([[0, 3]]), T([[0, 1]]), n_classes=3)
        with pytest.raises(ValueError, match="n_classes must be a positive int"):
            semantic_scores(T([[0, 1]]), T([[0, 1]]), n_classes=0)
        with pytest.raises(ValueError, match="n_true must be a positive int"):
            confusion_matrix(T([0]), T([0]), 0, 1)


class TestClustering:
    def test_one_to_one(self):
        true = T([0, 0, 1, 1, 2, 2])
        pred = T([2, 2, 0, 0, 1, 0])
        out = clustering_accuracy(true, pred, n_classes=3, n_clusters=3)
        assert out["mapping"].tolist() == [1, 2, 0]
        assert out["acc"] == pytest.approx(5 / 6)
        assert out["acc_per_class"] == pytest.approx([1.0, 1.0, 0.5])
        assert out["macc"] == pytest.approx(2.5 / 3)

    def test_many_to_one(self):
        # Four sprites for two classes: clusters 0 and 3 both hold class 1.
        true = T([0, 0, 1, 1, 1, 0])
        pred = T([1, 1, 0, 3, 3, 2])
        out = clustering_accuracy(true, pred, n_classes=2, n_clusters=4)
        assert out["mapping"].tolist() == [1, 0, 0, 1]
        assert out["acc"] == 1.0

    def test_bad_shape(self):
        with pytest.raises(ValueError, match="1-D"):
            clustering_accuracy(T([[0, 1]]), T([[0, 1]]), 2, 2)
