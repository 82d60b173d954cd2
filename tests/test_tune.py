"""Ray Tune over mgdist runs on a real local Ray: two tiny trials, each a real mgdist run, report
every validation round and checkpoint to Tune, and ASHA sees the metric."""
import os

import pytest
import ray

tune = pytest.importorskip("ray.tune", reason="Ray Tune cannot be imported: pip install 'mgdist[tune]'",
                           exc_type=ImportError)
from ray.tune.schedulers import ASHAScheduler  # noqa: E402

import mgdist  # noqa: E402
import mgdist.tune  # noqa: E402
from mgdist.workloads import synthetic  # noqa: E402


class RecordingASHA(ASHAScheduler):
    """ASHA as it is, keeping each result it was shown."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def on_trial_result(self, tune_controller, trial, result):
        self.seen.append((trial.trial_id, result["step"], result["val_loss"]))
        return super().on_trial_result(tune_controller, trial, result)


def test_two_trials_report_rounds_and_checkpoints(tmp_path):
    data = str(tmp_path / "data")
    synthetic.write(data, rows=1200, features=4, files=2, row_group_rows=300, seed=2, progress=False)
    ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    try:
        settings = dict(data=data, steps=12, val_every=4, log_every=4, batch_size=200, workers=1, cpus_per_worker=1,
                        report="")
        trainable = tune.with_resources(tune.with_parameters(
            mgdist.tune.trainable, model="mgdist.workloads.quantile:QuantileMLP", model_args={"levels": [0.1, 0.9]},
            **settings), mgdist.tune.trial_resources(**settings))
        asha = RecordingASHA(time_attr="step", max_t=12, grace_period=4, reduction_factor=2)
        tuner = tune.Tuner(trainable, param_space={"lr": tune.grid_search([0.001, 0.03]),
                                                   "model_args": {"hidden": [8]}},
                           tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=asha),
                           run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="t", verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 2 and not results.errors
    for result in results:
        history = result.metrics_dataframe
        steps = history["step"].tolist()
        assert steps == [4, 8, 12][:len(steps)] and steps, steps  # ASHA may stop the worse one at a rung
        assert history["val_loss"].notna().all() and "coverage/0.9" in history
        assert result.checkpoint is not None
        trained = mgdist.load(result.checkpoint.path)
        assert trained.spec.args["hidden"] == [8] and trained.features == 4
        assert sorted(os.listdir(result.checkpoint.path))[1] == f"ckpt-{steps[-1]:09d}.json"
    assert {r.config["lr"] for r in results} == {0.001, 0.03}
    seen = {(t, s) for t, s, _ in asha.seen}
    assert len({t for t, _ in seen}) == 2 and len(seen) == sum(len(r.metrics_dataframe) for r in results)
