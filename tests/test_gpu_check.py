

def test_predict_step_reads_the_react_model_of_the_paired_run(tmp_path):
    gc = _module()
    out = tmp_path / "out"
    predict = next(s for s in gc.build_steps(str(out), "cuda", 2) if s.name == "nnkd predict")
    assert predict.prepare() is None  # nothing trained yet: the step is skipped, not failed
    ws = out / "quality" / "paired3d" / "workspace"
    (ws / "runs" / "paired3d" / "seed0" / "react").mkdir(parents=True)
    (ws / "runs" / "paired3d" / "seed0" / "react" / "run.json").write_text(json.dumps({"model_folder": "/m/REACT"}))
    (ws / "test_images" / "paired3d_932_ch0").mkdir(parents=True)
    argv = predict.prepare()
    assert argv[-10:] == ["-i", str(ws / "test_images" / "paired3d_932_ch0"), "-o", str(out / "predict_react"),
                          "-m", "/m/REACT", "-f", "0", "-device", "cuda"]
    assert argv[1:4] == ["-m", "nnkd.cli", "predict"]
