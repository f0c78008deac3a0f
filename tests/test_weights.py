"""Loading release checkpoints and our .safetensors files safely, with clear errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from backend.cli import main as cli_main
from backend.model import SlimDiffSRStudent, StudentConfig
from backend.weights import (
    WeightsError,
    convert_release,
    load_weights,
    save_safetensors,
    scale_from_filename,
)


@pytest.fixture(scope="module")
def paper_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return SlimDiffSRStudent().state_dict()


def _same_weights(model: SlimDiffSRStudent, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("prefix", ["module.", ""], ids=["dataparallel-keys", "plain-keys"])
def test_release_checkpoint_loads_with_either_key_style(tmp_path, paper_state, prefix) -> None:
    path = tmp_path / "net_params_4x.pkl"
    torch.save({prefix + k: v for k, v in paper_state.items()}, path)
    loaded = load_weights(path)
    assert loaded.scale == 4
    assert _same_weights(loaded.model, paper_state)
    assert not loaded.model.training


def test_malicious_pickle_is_refused_and_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "net_params_4x.pkl"
    with path.open("wb") as f:
        pickle.dump({"module.merge_conv1.weight": Payload()}, f)
    with pytest.raises(WeightsError, match="refused.*nothing from the file was executed"):
        load_weights(path)
    assert not marker.exists()


def test_truncated_file_gives_a_clear_error(tmp_path, paper_state) -> None:
    full = tmp_path / "full.pkl"
    torch.save({"module.merge_conv1.weight": paper_state["merge_conv1.weight"]}, full)
    cut = tmp_path / "net_params_4x.pkl"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_weights(cut)


def test_wrong_architecture_names_the_tensors(tmp_path, paper_state) -> None:
    state = dict(paper_state)
    state.pop("merge_conv2.bias")
    state["extra.weight"] = torch.zeros(1)
    state["merge_conv1.weight"] = torch.zeros(8, 64, 3, 3)
    path = tmp_path / "net_params_4x.pkl"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    msg = str(err.value)
    assert "merge_conv2.bias" in msg and "extra.weight" in msg and "merge_conv1.weight" in msg
    assert "\n" not in msg


def test_scale_from_name_metadata_or_user_and_mismatch(tmp_path, tiny_config) -> None:
    assert scale_from_filename("net_params_4x.pkl") == 4
    assert scale_from_filename("net_params_8x.pkl") == 8
    assert scale_from_filename("model_x8.safetensors") == 8
    assert scale_from_filename("weights.pkl") is None
    torch.manual_seed(0)
    model = SlimDiffSRStudent(tiny_config)
    sft = save_safetensors(model, tmp_path / "m.safetensors", 8)
    assert load_weights(sft).scale == 8
    with pytest.raises(WeightsError, match="x8.*x4 was requested"):
        load_weights(sft, scale=4)
    unnamed = tmp_path / "weights.pkl"
    torch.save(SlimDiffSRStudent().state_dict(), unnamed)
    with pytest.raises(WeightsError, match="give it explicitly"):
        load_weights(unnamed)
    assert load_weights(unnamed, scale=8).scale == 8
    named = tmp_path / "net_params_4x.pkl"
    unnamed.rename(named)
    with pytest.raises(WeightsError, match="x4 \\(file name\\) but x8"):
        load_weights(named, scale=8)


def test_safetensors_is_self_describing(tmp_path, tiny_config) -> None:
    torch.manual_seed(0)
    model = SlimDiffSRStudent(tiny_config)
    path = save_safetensors(
        model, tmp_path / "ours.safetensors", 4, name="compact", training={"steps": 12, "data": "x"}
    )
    loaded = load_weights(path)
    assert loaded.model.config == tiny_config
    assert _same_weights(loaded.model, model.state_dict())
    assert loaded.metadata["training"] == {"steps": 12, "data": "x"}
    assert loaded.metadata["value_range"] == [0.0, 1.0]
    assert loaded.metadata["input_bands"] == "RGB"
    assert loaded.description == "compact (x4)"
    # A file without our metadata is rejected with a pointer to the converter.
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"a": torch.zeros(1)}, str(bare))
    with pytest.raises(WeightsError, match="convert"):
        load_weights(bare)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="truncated"):
        load_weights(bad)


def test_converter_keeps_weights_and_records_scale(tmp_path, paper_state, capsys) -> None:
    src = tmp_path / "net_params_8x.pkl"
    torch.save({"module." + k: v for k, v in paper_state.items()}, src)
    dst = tmp_path / "release_8x.safetensors"
    assert cli_main(["convert", str(src), str(dst)]) == 0
    loaded = load_weights(dst)
    assert loaded.scale == 8
    assert loaded.model.config == StudentConfig()
    assert _same_weights(loaded.model, paper_state)
    assert json.loads(json.dumps(loaded.metadata["training"]))["source_file"] == "net_params_8x.pkl"
    # Errors on the command line are one line, exit code 2, no traceback.
    assert cli_main(["convert", str(tmp_path / "missing.pkl"), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: weights file not found") and err.count("\n") == 1
    with pytest.raises(WeightsError):
        convert_release(tmp_path / "nothing.pkl", dst)


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    other = tmp_path / "weights.onnx"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights format"):
        load_weights(other)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "none.safetensors")


def test_receptive_margin_round_trip_and_absence(tmp_path, tiny_config) -> None:
    model = SlimDiffSRStudent(tiny_config)
    with_margin = save_safetensors(model, tmp_path / "m_x4.safetensors", 4, extra={"receptive_margin": "9"})
    assert load_weights(with_margin).receptive_margin == 9
    plain = save_safetensors(model, tmp_path / "p_x4.safetensors", 4)
    assert load_weights(plain).receptive_margin is None
    bad = save_safetensors(model, tmp_path / "b_x4.safetensors", 4, extra={"receptive_margin": "wide"})
    assert load_weights(bad).receptive_margin is None
