"""Filter clustering, its math alone: the output-distance estimate (against measured
distances on a trained CNN), Ward + k-means, the pull and its schedule."""

import helpers
import keras
import numpy as np
import pytest

import tf_filterprune as tffp
from tf_filterprune.methods import clustering


def spearman(a, b):
    """Rank correlation (no ties expected in continuous data)."""
    ra, rb = (np.argsort(np.argsort(v)).astype(np.float64) for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def pairs(matrix):
    return matrix[np.triu_indices(matrix.shape[0], 1)]


def bn_stats(layer):
    gamma, beta, mean, var = layer.get_weights()
    return {"gamma": gamma, "beta": beta, "moving_mean": mean, "moving_variance": var,
            "epsilon": layer.epsilon}  # fmt: skip


# ------------------------------------------------------------- distance estimate


def test_the_estimate_is_the_formula_and_exact_for_white_inputs_without_bn():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 6))
    bn = {"gamma": rng.uniform(0.5, 2, 6), "beta": rng.normal(size=6),
          "moving_variance": rng.uniform(0.5, 2, 6), "epsilon": 1e-3}  # fmt: skip
    w = kernel.reshape(-1, 6).T
    cos = (w @ w.T) / np.outer(np.linalg.norm(w, axis=1), np.linalg.norm(w, axis=1))
    a = bn["gamma"] * np.sqrt(bn["moving_variance"] / (bn["moving_variance"] + 1e-3))
    beta = bn["beta"]
    want = (beta[:, None] - beta) ** 2 + a[:, None] ** 2 + a**2 - 2 * np.outer(a, a) * cos
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(clustering.output_distance(kernel, None, bn), want, atol=1e-9)
    # without BN: E(z_i - z_j)^2 = ||w_i - w_j||^2 + (b_i - b_j)^2 for unit white inputs
    bias = rng.normal(size=6)
    conv = keras.layers.Conv2D(6, 3)
    x = rng.normal(size=(8192, 3, 3, 4)).astype("float32")
    conv.build(x.shape)
    conv.set_weights([kernel.astype("float32"), bias.astype("float32")])
    z = conv(x).numpy().reshape(-1, 6).astype(np.float64)
    measured = np.mean((z[:, :, None] - z[:, None, :]) ** 2, axis=0)
    estimate = clustering.output_distance(kernel, bias)
    assert np.max(np.abs(measured - estimate) / (estimate + np.eye(6))) < 0.1  # sampling error
    assert spearman(pairs(estimate), pairs(measured)) > 0.95


def test_the_estimate_ranks_filter_pairs_as_measured_on_a_trained_cnn():
    model = helpers.compiled(helpers.small_cnn(), keras.optimizers.Adam(1e-2))
    x, y = helpers.tiny_data(n=128)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    tffp.recalibrate_batchnorm(model, x, steps=None)  # statistics of the trained weights
    inputs = helpers.tiny_data(n=64, seed=1)[0]  # new images from the training distribution
    for i in (1, 2, 3):
        conv, bn = model.get_layer(f"conv{i}"), model.get_layer(f"bn{i}")
        z = keras.Model(model.input, bn.output)(inputs, training=False).numpy()
        z = z.reshape(-1, conv.filters).astype(np.float64)
        measured = np.mean((z[:, :, None] - z[:, None, :]) ** 2, axis=0)
        estimate = clustering.output_distance(conv.kernel, conv.bias, bn_stats(bn))
        rho = spearman(pairs(estimate), pairs(measured))
        assert rho >= 0.8, (conv.name, rho)


# --------------------------------------------------------------------- clustering


def planted(seed, k=5, per=4, dim=6, noise=0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(k, dim))
    labels = rng.permutation(np.repeat(np.arange(k), per))
    return centres[labels] + rng.normal(scale=noise, size=(k * per, dim)), labels


def same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.array_equal(a[:, None] == a[None], b[:, None] == b[None])


@pytest.mark.parametrize("seed", range(3))
def test_ward_finds_planted_clusters_and_is_deterministic(seed):
    points, labels = planted(seed)
    found = clustering.ward_clusters(points, 5)
    assert same_partition(found, labels)
    np.testing.assert_array_equal(found, clustering.ward_clusters(points.copy(), 5))
    assignment, reps = clustering.cluster_channels(points, 5)
    assert same_partition(assignment, labels)
    assert np.all(np.diff(reps) > 0) and np.all(assignment[reps] == np.arange(5))


@pytest.mark.parametrize("seed", range(4))
def test_ward_matches_scipy_and_refinement_never_increases_the_error(seed):
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(int(rng.integers(8, 40)), 5))
    k = int(rng.integers(2, len(points) // 2))
    ours = clustering.ward_clusters(points, k)
    theirs = hierarchy.fcluster(hierarchy.linkage(points, "ward"), k, criterion="maxclust")
    assert same_partition(ours, theirs)

    def sse(labels):
        return np.sum((points - clustering.cluster_centres(points, labels, k)[labels]) ** 2)

    refined = clustering.kmeans_refine(points, ours, k)
    assert len(np.unique(refined)) == k and sse(refined) <= sse(ours) + 1e-12


def test_clusters_of_equal_rows_and_k_equal_to_size():
    points = np.repeat(np.array([[0.0, 1.0], [2.0, 0.0], [5.0, 5.0]]), [3, 2, 1], axis=0)
    assignment, reps = clustering.cluster_channels(points, 3)
    np.testing.assert_array_equal(assignment, [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(reps, [0, 3, 5])
    assert clustering.max_member_distance(points, assignment, reps) == 0.0
    assignment, reps = clustering.cluster_channels(points[::-1].copy() + np.arange(6)[:, None], 6)
    np.testing.assert_array_equal(assignment, np.arange(6))
    np.testing.assert_array_equal(clustering.consumer_map(assignment, 6), np.eye(6))
    with pytest.raises(ValueError, match="k must be"):
        clustering.ward_clusters(points, 0)


def test_ward_is_fast_enough_for_wide_layers():
    import time

    points = np.random.default_rng(0).normal(size=(512, 64))
    start = time.perf_counter()
    labels = clustering.ward_clusters(points, 256)
    assert time.perf_counter() - start < 10.0
    assert len(np.unique(labels)) == 256


# ------------------------------------------------------------------ pull, schedule


def test_pull_toward_centres_matches_numpy_on_any_axis_and_positions():
    rng = np.random.default_rng(0)
    value = rng.normal(size=(3, 2, 6))
    assignment = np.array([1, 0, 1, 2, 0, 1])
    centres = clustering.cluster_centres(np.moveaxis(value, 2, 0), assignment, 3)
    want = np.moveaxis(0.7 * np.moveaxis(value, 2, 0) + 0.3 * centres[assignment], 0, 2)
    got = clustering.pull_toward_centres(value, assignment, 3, 0.3, axis=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    full = clustering.pull_toward_centres(value, assignment, 3, 1.0, axis=2).numpy()
    for c in range(3):
        members = full[..., assignment == c]
        np.testing.assert_array_equal(members, np.broadcast_to(members[..., :1], members.shape))
    # a group occupying positions 1, 3 (and 5, 7 repeated) of a wider axis
    wide = rng.normal(size=(8, 3))
    positions = np.array([[1, 5], [3, 7]])
    got = clustering.pull_toward_centres(wide, [0, 0], 1, 0.5, axis=0, positions=positions).numpy()
    want = wide.copy()
    want[[1, 3]] = 0.5 * wide[[1, 3]] + 0.5 * wide[[1, 3]].mean(0)
    want[[5, 7]] = 0.5 * wide[[5, 7]] + 0.5 * wide[[5, 7]].mean(0)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_array_equal(got[[0, 2, 4, 6]], wide[[0, 2, 4, 6]])


def test_pull_schedule():
    assert clustering.pull_at(0.0, 0.05, 0.2) == 0.05
    assert clustering.pull_at(0.79, 0.05, 0.2) == 0.05
    assert clustering.pull_at(0.9, 0.05, 0.2) == pytest.approx(0.525)
    assert clustering.pull_at(1.0, 0.05, 0.2) == clustering.pull_at(3.0, 0.05, 0.2) == 1.0
    assert clustering.pull_at(0.99, 0.05, 0.0) == 0.05 and clustering.pull_at(1.0, 0.05, 0) == 1.0
