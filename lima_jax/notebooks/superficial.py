"""Superficial alignment at toy scale: LIMA's hypothesis on a real pretrained model.

LIMA argues that a model learns its knowledge in pretraining and that fine-tuning teaches only
the *format* of an answer. This module tests that on `stories260K` (a LLaMA pretrained on
TinyStories): the fine-tuning responses are the base model's *own* continuations, so they hold
nothing the model cannot already write, and only the interface can be learned. Steps:

1. `make_requests`: story requests ("Write a story about a girl named Mia who loves to bake
   cookies.") with a story opening that names the character;
2. `own_responses`: the base model continues each opening (sampled, until it ends the story
   with BOS, its pretraining document separator): response = opening + continuation;
3. `finetune`: `lima_jax.train` with LIMA's template, loss mask and EOT on the first n examples;
4. `measure`: held-out requests (activities never seen in fine-tuning, half of them naming
   characters never seen either), before and after: how often generation stops at EOT, how
   often the story names the requested character (adherence), and the length distribution.

`run_sizes` does 3 and 4 for each data size; `plot_results` draws the figures against it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

from lima_jax import jsonl
from lima_jax.checkpoint import epoch_end_steps
from lima_jax.data.tokenizer import Tokenizer
from lima_jax.decode import Answerer, SamplingConfig, encode_for_template

# Characters, split so that held-out requests name people fine-tuning never saw: adherence on
# them means the model learned "write about whoever is named", not a list of names.
TRAIN_NAMES = {
    "girl": ("Lily", "Mia", "Anna", "Lucy", "Sue", "Amy", "Kate", "Emma", "Jane", "Sara", "Molly",
             "Daisy"),
    "boy": ("Tom", "Ben", "Max", "Sam", "Jack", "Tim", "Bob", "Leo", "Joe", "Mike", "Billy",
            "Timmy"),
}
HELD_OUT_NAMES = {
    "girl": ("Zoe", "Ella", "Rose", "Mary", "Jill", "Sally"),
    "boy": ("Jake", "Finn", "Dan", "Pete", "Ned", "Roy"),
}
ACTIVITIES = (
    "play in the park", "paint pictures", "bake cookies", "play with a red ball", "read books",
    "swim in the lake", "climb trees", "sing songs", "ride a bike", "fly a kite", "dance",
    "build sand castles",
)
# Held-out requests pair these activities with both seen and new names: every held-out request
# is new, and adherence can be told apart for names fine-tuning saw and names it never saw.
HELD_OUT_ACTIVITIES = ("pick flowers", "play with a toy car", "help in the kitchen", "look at the stars")
PRONOUNS = {"girl": "She", "boy": "He"}
# Several wordings, so the model must find the name in the request rather than at a fixed place.
REQUEST_TEMPLATES = (
    "Write a story about a {kind} named {name} who loves to {activity}.",
    "Tell me a short story about {name}, a little {kind} who loves to {activity}.",
    ("Can you write a story for kids? The main character is a {kind} called {name}, who loves "
     "to {activity}."),
    "I want a bedtime story about a {kind} named {name}. {pronoun} loves to {activity}.",
)
OPENING = "Once upon a time, there was a little {kind} named {name}. {pronoun} loved to {activity}."
SOURCE = "own-continuations"


@dataclasses.dataclass(frozen=True)
class Request:
    """A story request: the user's text, and the story opening a matching response starts with."""

    name: str
    kind: str  # girl | boy
    activity: str
    text: str
    opening: str


def all_requests(names: dict[str, Sequence[str]] = TRAIN_NAMES, *, seed: int = 0,
                 activities: Sequence[str] = ACTIVITIES) -> list[Request]:
    """Every distinct request (name x activity x wording) for `names`, in a seeded random order."""
    combos = [(kind, name, activity, template)
              for kind, kind_names in names.items() for name in kind_names
              for activity in activities for template in REQUEST_TEMPLATES]
    requests = []
    for index in np.random.default_rng(seed).permutation(len(combos)):
        kind, name, activity, template = combos[index]
        fields = {"kind": kind, "name": name, "activity": activity, "pronoun": PRONOUNS[kind]}
        requests.append(Request(name, kind, activity, template.format(**fields),
                                OPENING.format(**fields)))
    return requests


def make_requests(count: int, names: dict[str, Sequence[str]] = TRAIN_NAMES, *,
                  seed: int = 0, activities: Sequence[str] = ACTIVITIES) -> list[Request]:
    """The first `count` of `all_requests(names, seed=seed, activities=activities)`."""
    requests = all_requests(names, seed=seed, activities=activities)
    if count > len(requests):
        raise ValueError(f"make_requests: asked for {count} requests, but the names, activities and "
                         f"wordings give only {len(requests)} distinct ones")
    return requests[:count]


def held_out_requests(count: int, *, seed: int = 1) -> list[Request]:
    """`count` requests fine-tuning never sees (HELD_OUT_ACTIVITIES), alternating a name it saw
    (TRAIN_NAMES) and a name it never saw (HELD_OUT_NAMES)."""
    seen = make_requests((count + 1) // 2, TRAIN_NAMES, seed=seed, activities=HELD_OUT_ACTIVITIES)
    new = make_requests(count // 2, HELD_OUT_NAMES, seed=seed, activities=HELD_OUT_ACTIVITIES)
    mixed = [r for pair in zip(seen, new) for r in pair]
    return mixed + seen[len(new):]


def _fixed_batches(items: Sequence, size: int) -> Iterable[tuple[int, list, int]]:
    """(start, chunk padded to `size` by repeating its last item, real length): one batch
    shape for the whole call, so the generator compiles once."""
    for start in range(0, len(items), size):
        chunk = list(items[start:start + size])
        yield start, chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


def own_responses(model, tokenizer: Tokenizer, count: int, *,
                  names: dict[str, Sequence[str]] = TRAIN_NAMES, max_new_tokens: int = 200,
                  max_len: int = 256, temperature: float = 0.8, seed: int = 0,
                  batch_size: int = 64, progress: bool = True) -> list[dict]:
    """`count` LIMA-format records {"conversations": [request, response], "source"} whose
    responses are the base model's own stories.

    The model continues each request's opening (BOS + opening, no template: plain pretraining
    text), sampling at `temperature`, until it emits BOS, which is how a llama2.c model ends a
    story. A story still going after `max_new_tokens`, or whose example (LIMA template, EOTs
    included) would not fit in `max_len` tokens, is left out: trimming would cut off the EOT
    the fine-tuning is meant to teach. Requests are drawn in `make_requests(seed)` order until
    `count` stories are complete.
    """
    from tqdm.auto import tqdm

    pool = all_requests(names, seed=seed)
    # Plain pretraining text (the raw template: BOS + opening), stopping at BOS or EOS.
    answerer = Answerer(model, tokenizer, "raw", extra_stops={tokenizer.bos_id: "bos"})
    sampling = SamplingConfig(temperature=temperature, top_p=1.0, repetition_penalty=1.0)
    records: list[dict] = []
    batch = min(batch_size, count)
    bar = tqdm(total=count, desc="own responses", unit="story", disable=not progress)
    for start, chunk, real in _fixed_batches(pool, batch):
        prompts = [answerer.encode(r.opening) for r in chunk]
        answers = answerer.answer(prompts, sampling=sampling, max_new_tokens=max_new_tokens, seed=seed,
                                  prompt_ids=[str(start + i) for i in range(len(chunk))])
        for request, prompt, out in zip(chunk[:real], prompts, answers):
            if out.stop_id is None:  # the story did not end
                continue
            # Decoded as one text: the opening's last piece and the continuation's first join up.
            response = tokenizer.decode(prompt[1:] + out.tokens).strip()
            example = encode_for_template(request.text, tokenizer, "lima")
            if len(example) + len(tokenizer.encode(response)) + 1 > max_len:
                continue
            records.append({"conversations": [request.text, response], "source": SOURCE})
            bar.update(1)
            if len(records) == count:
                bar.close()
                return records
    bar.close()
    raise ValueError(
        f"own_responses: only {len(records)} of {len(pool)} stories ended within "
        f"max_new_tokens={max_new_tokens} and max_len={max_len}; {count} were asked for "
        "(raise max_new_tokens and max_len, or ask for fewer)")


def write_jsonl(records: Iterable[dict], path: str | pathlib.Path) -> pathlib.Path:
    """Writes records one JSON object per line (LIMA's train.jsonl format)."""
    return jsonl.write_jsonl(path, records)


def names_character(text: str, name: str) -> bool:
    """Whether `text` names `name` as a word ('Tim' is not in 'Timmy')."""
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


@dataclasses.dataclass
class Measurement:
    """Generations for held-out requests and their figures.

    stop_reasons: per request 'eot' (LIMA's end of turn), 'bos' (the base model starting a
    new pretraining document), 'eos', 'length' or 'context'; lengths: new tokens before the
    stop; texts: the decoded responses; adherent: the response names the requested character.
    """

    stop_reasons: list[str]
    lengths: list[int]
    texts: list[str]
    adherent: list[bool]
    new_name: list[bool]  # the request names a character fine-tuning never saw

    def summary(self) -> dict:
        n = max(len(self.stop_reasons), 1)
        lengths = np.asarray(self.lengths or [0])
        rate = lambda reason: sum(r == reason for r in self.stop_reasons) / n

        def adherence(new: bool) -> float | None:
            hits = [a for a, is_new in zip(self.adherent, self.new_name) if is_new == new]
            return sum(hits) / len(hits) if hits else None

        return {
            "requests": len(self.stop_reasons),
            "eot_stop_rate": rate("eot"),
            "bos_stop_rate": rate("bos"),
            "unfinished_rate": rate("length") + rate("context"),
            "adherence": sum(self.adherent) / n,
            "adherence_seen_names": adherence(False),
            "adherence_new_names": adherence(True),
            "length_mean": float(lengths.mean()),
            "length_median": float(np.median(lengths)),
            "length_p10": float(np.percentile(lengths, 10)),
            "length_p90": float(np.percentile(lengths, 90)),
        }


def measure(model, tokenizer: Tokenizer, requests: Sequence[Request], *,
            sampling: SamplingConfig | None = None, max_new_tokens: int = 300, seed: int = 0,
            batch_size: int = 64, template: str = "lima", progress: bool = True) -> Measurement:
    """Answers each request as a chat model (the request as a user turn under `template`)
    and records why each answer stopped, its length, and whether it names the character.

    sampling defaults to LIMA's decoding (p 0.9, temperature 0.7, repetition penalty 1.2).
    Generation stops at EOT, EOS or BOS: without BOS the base model, which ends a story with
    it, would run on into a new story and its lengths would mean nothing.
    """
    from tqdm.auto import tqdm

    answerer = Answerer(model, tokenizer, template, extra_stops={tokenizer.bos_id: "bos"})
    train_names = {n for names in TRAIN_NAMES.values() for n in names}
    result = Measurement([], [], [], [], [])
    bar = tqdm(total=len(requests), desc="held-out answers", unit="answer", disable=not progress)
    for start, chunk, real in _fixed_batches(requests, min(batch_size, len(requests))):
        answers = answerer.answer_texts(
            [r.text for r in chunk], sampling=sampling, max_new_tokens=max_new_tokens, seed=seed,
            prompt_ids=[str(start + i) for i in range(len(chunk))])
        for request, out in zip(chunk[:real], answers[:real]):
            text = out.text.strip()
            result.stop_reasons.append(out.stop_reason)
            result.lengths.append(len(out.tokens))
            result.texts.append(text)
            result.adherent.append(names_character(text, request.name))
            result.new_name.append(request.name not in train_names)
        bar.update(real)
    bar.close()
    return result


def finetune_config(init_from: str | pathlib.Path, data_path: str | pathlib.Path,
                    workdir: str | pathlib.Path, *, epochs: int = 15, batch_size: int = 8,
                    learning_rate: float = 1e-2, end_learning_rate: float = 1e-3,
                    max_len: int = 256, residual_dropout: float = 0.2, seed: int = 0):
    """The run config for fine-tuning `init_from` (a Hugging Face directory) on `data_path`.

    LIMA's recipe (template with EOT, loss on responses and their EOT, AdamW 0.9/0.95, weight
    decay 0.1, linear decay without warmup, 15 epochs, residual dropout rising to 0.2 for a
    small model) except the learning rate. LIMA's 1e-5 is for 7B-65B models; here the new EOT
    embedding row starts as the mean of the others (coordinates ~0.24 in stories260K) and must
    move by about that much to win over BOS at a story's end, while Adam moves a weight by
    about the learning rate per step: at 1e-3, 60 steps move it 0.03 and EOT is never
    produced; at 1e-2 it is.
    """
    from lima_jax.train.config import get_base_config

    c = get_base_config()
    c.workdir = str(workdir)
    c.overwrite = True  # rerunning the experiment replaces each size's run (the trainer's own files)
    c.seed = seed
    c.model.init_from = str(init_from)
    c.model.dtype = "float32"  # a tiny model: bf16 saves nothing and is slower on CPU
    c.model.residual_dropout = residual_dropout
    c.model.scan_unroll = 0  # few layers: unrolled runs faster on CPU
    c.data.path = str(data_path)
    c.data.tokenizer = str(pathlib.Path(init_from) / "tokenizer.model")
    c.data.max_len = max_len
    c.data.global_batch_size = batch_size
    c.data.num_epochs = epochs
    c.data.seed = seed
    c.optimizer.learning_rate = learning_rate
    c.optimizer.end_learning_rate = end_learning_rate
    c.train.log_every = 1
    c.checkpoint.async_save = False
    # One device: the model is tiny, and the batch then need not split over several.
    c.mesh.fsdp = 1
    return c


def finetune(config) -> tuple[object, dict]:
    """Runs `lima_jax.train` on `config`; returns (the fine-tuned model, the run's summary)."""
    from lima_jax.decode.load import load_for_decoding
    from lima_jax.train import train

    summary = train(config)
    if summary.get("status") != "completed":  # e.g. SIGTERM: train() saves and returns early
        raise RuntimeError(f"finetune: the run in {config.workdir} ended {summary.get('status')!r}, "
                           "not 'completed'; its model would not be the fine-tuned one")
    model, _ = load_for_decoding(ckpt=config.workdir)
    return model, summary


def final_loss(workdir: str | pathlib.Path, last: int = 5) -> float | None:
    """Mean training loss of the last `last` logged steps of a run (None when none were logged)."""
    losses = [r["loss"] for r in jsonl.read_records(pathlib.Path(workdir) / "metrics.jsonl") if "loss" in r]
    return float(np.mean(losses[-last:])) if losses else None


def run_sizes(hf_dir: str | pathlib.Path, records: Sequence[dict], sizes: Sequence[int],
              held_out: Sequence[Request], workdir: str | pathlib.Path, *,
              measure_options: dict | None = None, train_options: dict | None = None,
              progress: bool = True) -> list[dict]:
    """Fine-tunes a fresh copy of the base model on the first n records for each n in `sizes`
    (nested subsets, as in LIMA's quantity ablation) and measures it on `held_out`.

    Returns one row per size: {'examples', 'steps', 'final_loss', **Measurement.summary(),
    'lengths', 'stop_reasons', 'sample'}.
    """
    workdir = pathlib.Path(workdir)
    rows = []
    for n in sizes:
        if n > len(records):
            raise ValueError(f"run_sizes: data size {n} is larger than the {len(records)} "
                             "records given; make more with own_responses")
        run_dir = workdir / f"n{n}"
        data = write_jsonl(records[:n], run_dir / "train.jsonl")
        config = finetune_config(hf_dir, data, run_dir, **(train_options or {}))
        model, _ = finetune(config)
        tokenizer = Tokenizer.load(config.data.tokenizer)
        result = measure(model, tokenizer, held_out, progress=progress, **(measure_options or {}))
        rows.append(result_row(n, result, steps=_steps(run_dir), loss=final_loss(run_dir)))
    return rows


def _steps(run_dir: pathlib.Path) -> int:
    ends = epoch_end_steps(run_dir)
    return ends[-1] if ends else 0


def result_row(examples: int, result: Measurement, *, steps: int = 0,
               loss: float | None = None) -> dict:
    """One row of the results table (`examples` = 0 for the base model)."""
    return {"examples": examples, "steps": steps, "final_loss": loss, **result.summary(),
            "lengths": list(result.lengths), "stop_reasons": list(result.stop_reasons),
            "sample": result.texts[0] if result.texts else ""}


def format_table(rows: Sequence[dict]) -> str:
    """The results as a Markdown table (the README's)."""

    def pct(value):
        return "-" if value is None else f"{value:.0%}"

    lines = [("| examples | steps | EOT stop | BOS stop | unfinished | adherence (seen / new names) | "
              "length median (p10-p90) |"), "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        label = "0 (base)" if r["examples"] == 0 else str(r["examples"])
        lines.append(
            f"| {label} | {r['steps']} | {r['eot_stop_rate']:.0%} | {r['bos_stop_rate']:.0%} | "
            f"{r['unfinished_rate']:.0%} | {r['adherence']:.0%} ({pct(r['adherence_seen_names'])} / "
            f"{pct(r['adherence_new_names'])}) | {r['length_median']:.0f} "
            f"({r['length_p10']:.0f}-{r['length_p90']:.0f}) |")
    return "\n".join(lines)


def plot_results(rows: Sequence[dict], path: str | pathlib.Path | None = None):
    """EOT-stop rate, adherence and lengths against the number of examples; the base model
    (examples = 0) is the leftmost point. Returns the matplotlib figure (saved to `path`)."""
    import matplotlib.pyplot as plt

    labels = ["base" if r["examples"] == 0 else str(r["examples"]) for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = ((axes[0], ("eot_stop_rate",), "stops at EOT"),
              (axes[1], ("adherence_seen_names", "adherence_new_names"),
               "names the requested character"))
    for ax, keys, title in panels:
        for key in keys:
            values = [np.nan if r[key] is None else r[key] for r in rows]
            ax.plot(x, values, "o-", label=key.replace("adherence_", "").replace("_", " "))
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.set_ylabel("fraction of held-out requests")
    axes[1].legend()
    axes[2].boxplot([r["lengths"] for r in rows], positions=x, widths=0.5)
    axes[2].set_title("response length")
    axes[2].set_ylabel("new tokens")
    for ax in axes:
        ax.set_xticks(x, labels)
        ax.set_xlabel("fine-tuning examples")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
