"""Ingest throughput: N synthetic events through the real bundled broker into DuckDB, against two baselines
measured in the same run on the same texts.

    .venv/bin/python bench/ingest.py [--events 20000] [--baseline-events 2000]

(a) Presidio's BatchAnalyzerEngine with default settings (the only change: the bundled small spaCy model,
    since the default en_core_web_lg is not installed); (b) bare spaCy NER: `nlp.pipe` with only tok2vec and
    ner enabled, one process. Baselines run on the texts of the first --baseline-events events (they are
    slow) and are converted to events/s. Targets: ingest >= 4x (a) and >= 0.8x (b).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.broker import EmbeddedBroker  # noqa: E402
from infra.config import load_config  # noqa: E402
from infra.db import open_store  # noqa: E402
from infra.kafka import client_settings  # noqa: E402
from infra.services import build_ingest, run_ingest  # noqa: E402
from ingest.batch import text_fields  # noqa: E402
from ingest.producer import EventProducer  # noqa: E402
from ingest.scrub import offline_tldextract  # noqa: E402
from ingest.synthetic import events as make_events  # noqa: E402


def texts_of(evs) -> list[str]:
    return [t for e in evs for _, t in text_fields(e)]


def baseline_presidio(texts: list[str], model: str) -> float:
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    offline_tldextract()
    engine = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    ).create_engine()
    batch = BatchAnalyzerEngine(AnalyzerEngine(nlp_engine=engine, supported_languages=["en"]))
    started = time.perf_counter()
    list(batch.analyze_iterator(texts, language="en"))
    return time.perf_counter() - started


def baseline_spacy(texts: list[str], model: str) -> float:
    import spacy

    nlp = spacy.load(model, disable=["tagger", "parser", "attribute_ruler", "lemmatizer"])
    started = time.perf_counter()
    for _ in nlp.pipe(texts, batch_size=256):
        pass
    return time.perf_counter() - started


def run_ingest_bench(n: int, workdir: Path) -> dict:
    cfg = load_config(overrides=[f"data_dir={workdir}"], env={})
    evs = make_events(n, seed=42)
    with EmbeddedBroker(cfg.kafka, workdir) as broker:
        cfg = load_config(overrides=[f"data_dir={workdir}", f"kafka.bootstrap_servers={broker.bootstrap}"], env={})
        producer = EventProducer.connect(
            client_settings(cfg.kafka, broker.bootstrap), cfg.kafka.chats_topic, cfg.kafka.feedback_topic
        )
        started = time.perf_counter()
        for e in evs:
            producer.send(e)
        producer.flush()
        produce_s = time.perf_counter() - started
        producer.close()

        con = open_store(cfg.db_path)
        ingest = build_ingest(cfg, broker.bootstrap, con.cursor())  # scrub workers start here, untimed
        reader = con.cursor()
        stop = threading.Event()
        thread = threading.Thread(target=run_ingest, args=(ingest, stop.is_set))
        started = time.perf_counter()
        thread.start()
        first_row, stored = None, 0
        while stored < n:
            time.sleep(0.05)
            stored = reader.execute("SELECT (SELECT count(*) FROM chats) + (SELECT count(*) FROM feedback)").fetchone()[
                0
            ]
            if stored and first_row is None:
                first_row = time.perf_counter()
        total_s = time.perf_counter() - started
        stop.set()
        thread.join()
        findings = reader.execute("SELECT count(*) FROM pii_findings").fetchone()[0]
        con.close()
    return {"produce_s": produce_s, "ingest_s": total_s, "join_s": first_row - started, "findings": findings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--baseline-events", type=int, default=2_000)
    args = parser.parse_args()
    model = load_config(env={}).ingest.pii.spacy_model

    sample = make_events(args.events, seed=42)[: args.baseline_events]
    texts = texts_of(sample)
    print(f"baseline sample: {len(sample)} events, {len(texts)} texts")
    t_presidio = baseline_presidio(texts, model)
    t_spacy = baseline_spacy(texts, model)
    with tempfile.TemporaryDirectory() as tmp:
        r = run_ingest_bench(args.events, Path(tmp))

    ours = args.events / r["ingest_s"]
    ours_steady = args.events / (r["ingest_s"] - r["join_s"])
    a = len(sample) / t_presidio
    b = len(sample) / t_spacy
    print(f"cores: {os.cpu_count()}")
    print(f"produce: {args.events} events in {r['produce_s']:.1f} s ({args.events / r['produce_s']:,.0f}/s)")
    print(
        f"ingest end-to-end: {args.events} events in {r['ingest_s']:.1f} s = {ours:,.0f} events/s "
        f"({r['join_s']:.1f} s of it joining the group; {ours_steady:,.0f} events/s after), "
        f"{r['findings']} PII findings"
    )
    print(
        f"(a) Presidio BatchAnalyzerEngine, default settings: {a:,.0f} events/s "
        f"({len(texts) / t_presidio:,.0f} texts/s)"
    )
    print(
        f"(b) bare spaCy NER, nlp.pipe tok2vec+ner:           {b:,.0f} events/s ({len(texts) / t_spacy:,.0f} texts/s)"
    )
    print(f"ratio vs (a): {ours / a:.2f}x (target >= 4)")
    print(f"ratio vs (b): {ours / b:.2f}x (target >= 0.8)")


if __name__ == "__main__":
    main()
