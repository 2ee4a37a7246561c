"""`fastresnet serve`: a trained model behind a small Gradio page, the way fastai's course deploys a learner.

Upload an image, see the top-3 classes with their probabilities and the 32x32 picture the model was given,
with the run's facts (test accuracy, epochs, date) underneath. Predictions go through `predict_images`, the
code behind `fastresnet predict` and the same test pipeline as `learn.predict`. Bad uploads (not an image,
a corrupt file, too many pixels) answer with a message on the page; the server keeps serving.

Needs the optional extra: pip install "fastresnet[serve]" (in a clone: pip install -e ".[serve]")
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .config import UserError
from .data import CIFAR_CLASSES, SIZE, load_image
from .folder import FINAL, RUN_JSON, SETTINGS, read_json_or_none
from .inference import image_size, predict_images, top_classes
from .learner import load_model, model_file

__all__ = ["gradio", "run_facts", "example_images",
           "build_app", "classify", "MAX_PIXELS", "MAX_UPLOAD", "UPLOAD_TTL", "MAX_QUEUE"]

MAX_PIXELS = 4096 * 4096  # an upload with more pixels is refused before it is decoded (decompression bombs)
MAX_UPLOAD = "20mb"       # Gradio refuses larger files itself
UPLOAD_TTL = 600          # seconds an upload is kept: a long-running page does not fill the disk
MAX_QUEUE = 64            # requests waiting at most; the next gets Gradio's "Queue is full! Please try again."


def gradio():
    "Gradio, imported with its usage analytics off (a local page calls nowhere); ImportError if it is not installed."
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio
    return gradio


def run_facts(model_path: Path) -> str:
    "Markdown lines about the run the model comes from, if it sits in a run folder; empty otherwise."
    d = model_path.parent
    final, info = read_json_or_none(d / FINAL), read_json_or_none(d / RUN_JSON)
    if not final and not info:
        return ""
    lines = [f"**Model:** `{model_path}`"]
    if final:
        tta = f" (flip-TTA {final['accuracy_tta']:.2%})" if final.get("accuracy_tta") is not None else ""
        lines.append(f"**Test accuracy:** {final['accuracy']:.2%}{tta} on {final.get('n_images', 0):,} test images")
    if (d / SETTINGS).is_file():
        from .config import UserError, load_settings
        try:
            r = load_settings(d / SETTINGS)
            lines.append(f"**Training:** {r.epochs} epochs, batch {r.bs}, peak at epoch {r.peak_epoch}, "
                         f"width {r.width:g}")
        except (UserError, OSError):
            pass  # facts are a courtesy: a bad settings file must not stop the page
    if info:
        n = f"{info['n_train']:,} training images" if "n_train" in info else "training images: unknown"
        if info.get("subset"):
            n += " (a subset of the data)"
        lines.append(f"**Data:** {n}")
    stamp = d / FINAL if (d / FINAL).is_file() else model_path
    lines.append(f"**Finished:** {time.strftime('%Y-%m-%d %H:%M', time.localtime(stamp.stat().st_mtime))}")
    return "\n\n".join(lines)


def example_images(model_path: Path, vocab: list[str], folder: str | Path | None = None, n: int = 4,
                   out: str | Path | None = None) -> list[str]:
    """Example uploads: the first images of `folder` (recursively), else one test image for each of the first `n`
    classes of the run's own data (copied into `out`, named by class), else `n` generated pictures written there.
    Never bundled files. `out` (a new temporary folder if not given) belongs to the caller, who removes it."""
    from fastai.data.transforms import get_image_files
    if folder is not None:
        files = sorted(get_image_files(folder))[:n]
        if not files:
            raise UserError(f"--examples {folder} holds no image files.")
        return [str(f) for f in files]
    info = read_json_or_none(model_path.parent / RUN_JSON) or {}
    test = Path(info["data"]) / "test" if info.get("data") else None
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="fastresnet-examples-"))
    out.mkdir(parents=True, exist_ok=True)
    if test is not None and test.is_dir():
        found = {c: next(iter(sorted(get_image_files(test / c))), None) for c in vocab[:n] if (test / c).is_dir()}
        paths = [shutil.copy(f, out / f"{c}{f.suffix}") for c, f in found.items() if f is not None]  # named by class
        if paths:
            return [str(p) for p in paths]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    paths = []
    for i in range(n):  # smooth colour fields: something to click, clearly not a photograph
        rgb = np.stack([(xx * (i + 3) * 2) % 256, (yy * (i + 2) * 3) % 256, np.full_like(xx, 60 * i)], -1)
        paths.append(str(out / f"generated-{i + 1}.png"))
        Image.fromarray(rgb.astype(np.uint8)).save(paths[-1])
    return paths


def classify(learn, path: str | None, k: int = 3) -> tuple[dict[str, float], np.ndarray]:
    "One uploaded file → ({class: probability} of the top `k`, the RGB image the model saw). Raises UserError."
    if not path:
        raise UserError("No image was uploaded.")
    img = load_image(path, resize=True, max_pixels=MAX_PIXELS, size=image_size(learn))
    probs = predict_images(learn, [img])[0]
    return dict(top_classes(probs, list(learn.dls.vocab), k)), img.permute(1, 2, 0).numpy()


def build_app(model: str | Path, examples: str | Path | None = None, workdir: str | Path | None = None,
              allow_pickle: bool = False):
    """The Gradio Blocks page for one model (a file or a run folder; a pickle only if `allow_pickle`); copied or
    generated examples go to `workdir`."""
    gr = gradio()
    path = model_file(model)
    learn = load_model(path, allow_pickle)
    vocab, size = list(learn.dls.vocab), image_size(learn)

    def predict(file):
        try:
            with learn.no_bar():
                label, seen = classify(learn, file)
        except UserError as e:
            raise gr.Error(_upload_message(str(e), file), print_exception=False) from None
        return label, Image.fromarray(seen).resize((SIZE * 6, SIZE * 6), Image.NEAREST)  # 192 px, whatever the size

    with gr.Blocks(title="fastresnet", analytics_enabled=False, delete_cache=(UPLOAD_TTL, UPLOAD_TTL)) as app:
        kind = "CIFAR-10" if vocab == CIFAR_CLASSES else f"{len(vocab)}-class"
        gr.Markdown(f"# fastresnet: {kind} classifier\n"
                    f"Upload an image; it is resized to {size}x{size}, as the model was trained on "
                    f"({', '.join(vocab)}).")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="upload")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="Top 3 classes", elem_id="label")
                seen = gr.Image(label=f"What the model sees ({size}x{size}, enlarged)", interactive=False,
                                elem_id="seen")
        # registered before the examples: their click runs `predict` too and would take its name ("/predict_1")
        button.click(predict, inputs=upload, outputs=[label, seen], api_name="predict")  # for gradio_client
        shown = example_images(path, vocab, examples, out=workdir)
        gr.Examples(examples=shown, inputs=upload, outputs=[label, seen], fn=predict, run_on_click=True,
                    cache_examples=False, label="Examples (click one)")
        facts = run_facts(path)
        if facts:
            gr.Markdown(facts, elem_id="facts")
        upload.upload(predict, inputs=upload, outputs=[label, seen], api_visibility="undocumented")
        upload.clear(lambda: (None, None), outputs=[label, seen], api_visibility="private")  # no stale result
    app.example_folders = sorted({str(Path(f).parent) for f in shown})  # Gradio serves files from these only
    return app


def _upload_message(message: str, file: str | None) -> str:
    "Our message, with Gradio's temporary upload path replaced by the file's own name."
    return message.replace(str(file), Path(file).name) if file else message


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 7860, examples: str | Path | None = None,
          max_queue: int = MAX_QUEUE, allow_pickle: bool = False) -> None:
    """Build the page and serve it until interrupted (Ctrl-C; the CLI turns SIGTERM into one). Examples and
    uploads live in one temporary folder, removed when the server stops; uploads older than `UPLOAD_TTL` go
    while it runs. Queue policy: one prediction at a time (the model uses every core; more at once only share
    them), at most `max_queue` waiting; a request beyond that is refused at once with "Queue is full! Please
    try again.", never left hanging (docs/benchmarks.md: the page under load)."""
    own_uploads = "GRADIO_TEMP_DIR" not in os.environ  # else the user chose where Gradio keeps uploads
    with tempfile.TemporaryDirectory(prefix="fastresnet-serve-") as workdir:
        if own_uploads:
            os.environ["GRADIO_TEMP_DIR"] = str(Path(workdir) / "uploads")  # not the shared /tmp/gradio
        try:
            app = build_app(model, examples, workdir, allow_pickle)  # the model loads (or is refused) first
            print(f"Serving {model_file(model)} on http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
            app.queue(default_concurrency_limit=1, max_size=max_queue)
            app.launch(server_name=host, server_port=port, share=False, show_error=True, max_file_size=MAX_UPLOAD,
                       footer_links=[], theme=_local_theme(), allowed_paths=app.example_folders)
        finally:
            if own_uploads:
                os.environ.pop("GRADIO_TEMP_DIR", None)


def _local_theme():
    "Gradio's default theme with system fonts: the page loads nothing from the internet."
    return gradio().themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])
