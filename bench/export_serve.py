"""Export and serving figures for BENCHMARKS.md (issue 20), one command, one machine:

    .venv/bin/python bench/export_serve.py [--quick]

1. For each shared classification dataset (sign-language digits, dogs-vs-cats, PACS photo and art as
   7-class tasks): an extract-mode run (Lite0), exported to ONNX fp32 (parity gate on the *whole* valid
   split) and int8; valid accuracy of torch / ONNX fp32 / ONNX int8, top-1 agreement with torch, file
   size, and ms an image at batch 1 and 16 on this CPU (two threads).
2. Serving sign-language digits with `graft serve` in its own process: the run folder on torch and on the
   default engine (exported in memory), the ONNX fp32 and int8 files:
   a bounded load test on loopback (8 concurrent clients: the p95 target; 32 clients, thousands of
   requests: errors), latency percentiles and requests a second.

With ``--audio-run RUN``: step 1 only, for an audio run (e.g. ``graft wakeword``'s), as ``export_audio``.

Results: bench/results/export_serve.json. (Its ``export_utkface`` entry, the multi-task UTKFace export, was
measured by training `graft train utkface/images --labels utkface --tasks age,gender --mode extract` and
`graft export` with `--samples` = the whole valid split, then `--int8 --max-drop 100`.)
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
WORK = ROOT / "bench" / "out" / "export_serve"
RESULTS = ROOT / "bench" / "results" / "export_serve.json"


def datasets() -> dict[str, Path]:
    return {
        "sign-language-digits": SHARED / "sign-language-digits",
        "dogs-vs-cats-small": SHARED / "dogs-vs-cats-small",
        "pacs-photo": SHARED / "pacs-photo-art" / "photo",
        "pacs-art": SHARED / "pacs-photo-art" / "art_painting",
    }


def train(name: str, data: Path) -> Path:
    import graft

    run = WORK / name / "run"
    if not (run / "metrics.json").is_file():
        graft.train(data, run, mode="extract", seed=0, quiet=True, overwrite=True)
    return run


def timing(run_batch, batch: np.ndarray, repeats: int) -> float:
    run_batch(batch)  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        run_batch(batch)
    return 1000 * (time.perf_counter() - began) / (repeats * len(batch))


def export_figures(name: str, run: Path, quick: bool) -> dict:
    import onnxruntime
    import torch

    import graft
    from graft.core.inputs import make_loader
    from graft.core.run_files import first_split
    from graft.deploy.outputs import UserOutputs
    from graft.fileio import read_json

    onnxruntime.set_default_logger_severity(3)
    trained = graft.load(run)
    manifest = read_json(run / "manifest.json")
    split = first_split(manifest, "valid", "test")
    items = [(p, int(label)) for p, label in manifest["splits"][split]]
    fp32, int8 = WORK / name / "model.onnx", WORK / name / "model-int8.onnx"
    exported = graft.export(run, fp32, samples=len(items))
    quantised = graft.export(run, int8, int8=True, max_drop=100.0)
    batches = [
        (x.numpy(), y.numpy())
        for x, y in make_loader(trained.modality.examples(items, trained.preprocessing, augment=False), 16)
    ]
    model = UserOutputs(trained).eval()

    def torch_run(batch):
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    sessions = {
        kind: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for kind, path in (("onnx_fp32", fp32), ("onnx_int8", int8))
    }
    engines = {"torch_fp32": torch_run} | {
        kind: (lambda batch, s=session: s.run(["probabilities"], {"input": batch})[0])
        for kind, session in sessions.items()
    }
    labels = np.concatenate([y for _, y in batches])
    reference = np.concatenate([torch_run(x) for x, _ in batches]).argmax(1)
    figures = {
        "split": split,
        "n": len(items),
        "parity": exported["parity"],
        "int8_gate": quantised["int8"],
        "engines": {},
    }
    repeats = 3 if quick else 10
    for kind, run_batch in engines.items():
        predicted = np.concatenate([run_batch(x) for x, _ in batches]).argmax(1)
        full = batches[0][0]
        figures["engines"][kind] = {
            "accuracy": float((predicted == labels).mean()),
            "top1_agreement_with_torch": float((predicted == reference).mean()),
            "ms_per_image_batch16": timing(run_batch, full, repeats),
            "ms_per_image_batch1": timing(run_batch, full[:1], repeats * 8),
            "bytes": (run / "model.safetensors").stat().st_size
            if kind == "torch_fp32"
            else (fp32 if kind == "onnx_fp32" else int8).stat().st_size,
        }
    figures["int8_drop_points"] = 100 * (
        figures["engines"]["torch_fp32"]["accuracy"] - figures["engines"]["onnx_int8"]["accuracy"]
    )
    return figures


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def serving_figures(model: Path, image: Path, quick: bool, engine: str) -> dict:
    import httpx

    from graft.deploy.load_test import load_test

    port = free_port()
    server = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "graft"), "serve", str(model), "--port", str(port), "--engine", engine],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"graft serve {model} did not start")
            time.sleep(0.25)
        load_test(url, image, clients=4, requests=40)  # warm-up
        return {
            "clients_1": load_test(url, image, clients=1, requests=50 if quick else 200),
            "clients_8": load_test(url, image, clients=8, requests=200 if quick else 800),
            "clients_32": load_test(url, image, clients=32, requests=400 if quick else 3000),
        }
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats and requests")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--serving", nargs="*", help="only these serving kinds (torch, run_auto, onnx_fp32, onnx_int8)")
    parser.add_argument("--audio-run", type=Path, help="only the export figures of this audio run (a graft wakeword)")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.audio_run:
        results["export_audio"] = export_figures("audio", args.audio_run, args.quick)
        results["export_audio"]["command"] = " ".join(["bench/export_serve.py", *sys.argv[1:]])
        results["export_audio"]["date"] = time.strftime("%Y-%m-%d")
        print(json.dumps(results["export_audio"]["engines"], indent=1))
        RESULTS.write_text(json.dumps(results, indent=2))
        return
    results["date"] = time.strftime("%Y-%m-%d")
    results["command"] = " ".join(["bench/export_serve.py", *sys.argv[1:]])
    if not args.skip_export:
        results["export"] = {}
        for name, data in datasets().items():
            run = train(name, data)
            results["export"][name] = export_figures(name, run, args.quick)
            print(name, json.dumps(results["export"][name]["engines"], indent=1), flush=True)
            RESULTS.write_text(json.dumps(results, indent=2))
    run = train("sign-language-digits", datasets()["sign-language-digits"])
    image = sorted((SHARED / "sign-language-digits" / "test").rglob("*.*"))[0]
    results["serving"] = {**results.get("serving", {}), "image": str(image.relative_to(SHARED))}
    for kind, model, engine in (
        ("torch", run, "torch"),
        ("run_auto", run, "auto"),  # the run folder as graft serve runs it by default: exported in memory
        ("onnx_fp32", WORK / "sign-language-digits" / "model.onnx", "auto"),
        ("onnx_int8", WORK / "sign-language-digits" / "model-int8.onnx", "auto"),
    ):
        if args.serving and kind not in args.serving:
            continue
        results["serving"][kind] = serving_figures(model, image, args.quick, engine)
        print(
            kind,
            {
                k: (v["p50_ms"], v["p95_ms"], v["requests_per_s"], v["statuses"])
                for k, v in results["serving"][kind].items()
            },
            flush=True,
        )
        RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
