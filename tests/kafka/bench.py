"""Kafka-client figures of `tradeshard serve` (BENCHMARKS.md), with librdkafka through
confluent-kafka:

- consume: every trade event of a data directory made by `tradeshard load --workload ingest`,
  by one consumer, from the start to the end (events/s, JSON and binary values);
- produce: N messages with acks=all and idempotence (messages/s, each durable when acked);
- latency: trades created at a steady rate while a consumer reads them: the time from the
  trade record's write time (`at_ms`, a little before its acknowledgement) to the consumer's
  receipt, p50 and p99.

Usage: python bench.py TRADESHARD_BINARY [--trades N] [--messages N] [--json]
Use a release build. Prints one JSON object.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def start(binary, data_dir, *extra):
    server = subprocess.Popen([binary, "serve", "--dir", data_dir, "--kafka", "127.0.0.1:0", "--stats", "off",
                               "--metrics", "off", *extra], stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    assert line.startswith("listening "), line
    return server, dict(p.split("=", 1) for p in line.split()[1:])["kafka"]


def stop(server):
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)


def consume_all(bootstrap, expected, group):
    from confluent_kafka import Consumer
    # librdkafka's defaults pause a partition's fetches for a second once 100,000 messages
    # wait in its queue; a consumer meant to keep up lets more wait and pauses 5 ms.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "fetch.max.bytes": 64 << 20,
                         "max.partition.fetch.bytes": 16 << 20, "queued.max.messages.kbytes": 1 << 20,
                         "queued.min.messages": 1_000_000, "fetch.queue.backoff.ms": 5})
    consumer.subscribe(["trades"])
    count, started, deadline = 0, None, time.time() + 600
    while count < expected and time.time() < deadline:
        batch = consumer.consume(num_messages=100_000, timeout=1.0)
        if batch and started is None:
            started = time.time()
        count += sum(1 for m in batch if m.error() is None)
    elapsed = time.time() - started
    consumer.close()
    return count, count / elapsed


def produce(bootstrap, messages, payload_bytes):
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5, "batch.size": 1 << 20, "queue.buffering.max.messages": 1_000_000})
    payload = b"x" * payload_bytes
    acked = [0]

    def delivered(error, _message):
        if error is None:
            acked[0] += 1
    started = time.time()
    for i in range(messages):
        while True:
            try:
                producer.produce("bench", key=str(i % 1000).encode(), value=payload, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(600)
    elapsed = time.time() - started
    return acked[0], acked[0] / elapsed


def latency(bootstrap, seconds):
    from confluent_kafka import Consumer
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "latency", "auto.offset.reset": "latest",
                         "enable.auto.commit": False})
    consumer.subscribe(["trades"])
    samples, deadline = [], time.time() + seconds
    while time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        received_ms = time.time() * 1000
        samples.append(received_ms - message.timestamp()[1])
    consumer.close()
    samples.sort()
    pick = lambda q: round(samples[min(len(samples) - 1, int(q * len(samples)))], 2) if samples else None
    return len(samples), pick(0.5), pick(0.99)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--trades", type=int, default=2_000_000)
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--payload-bytes", type=int, default=100)
    parser.add_argument("--latency-seconds", type=int, default=20)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tradeshard-kafka-bench-", dir=".")
    data = os.path.join(work, "data")
    subprocess.run([args.binary, "load", "--dir", data, "--workload", "ingest", "--ops", str(args.trades),
                    "--inflight", "4096"], check=True, stdout=subprocess.DEVNULL)
    result = {"trades": args.trades}
    for encoding in ["json", "binary"]:
        server, bootstrap = start(args.binary, data, "--trades-encoding", encoding)
        count, rate = consume_all(bootstrap, args.trades, f"bench-{encoding}")
        stop(server)
        result[f"consume_{encoding}_events"] = count
        result[f"consume_{encoding}_events_per_s"] = round(rate)
    server, bootstrap = start(args.binary, data)
    acked, rate = produce(bootstrap, args.messages, args.payload_bytes)
    stop(server)
    result.update({"produce_acked": acked, "produce_acks_all_per_s": round(rate), "payload_bytes": args.payload_bytes})
    server, bootstrap = start(args.binary, data, "--trades-per-second", "2000")
    count, p50, p99 = latency(bootstrap, args.latency_seconds)
    stop(server)
    result.update({"latency_events": count, "latency_p50_ms": p50, "latency_p99_ms": p99})
    print(json.dumps(result))
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
