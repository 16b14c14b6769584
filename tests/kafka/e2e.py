"""End to end: `tradeshard serve` consumed and fed by real Kafka clients.

Run as `python e2e.py TRADESHARD_BINARY` (.ci/run does, in a virtual environment with
requirements.txt). Every server binds to a free loopback port and is stopped at the end,
every wait is bounded. Checks:

- trades made by the load tool are consumed by a group of two members in two processes
  (librdkafka and kafka-python), partitions split between them; one leaves (a rebalance, the
  other takes its partitions from their committed offsets); the server restarts; a third
  member resumes from the committed offsets. Nothing is missing, and an event is delivered
  twice only if it was delivered and not committed before its member left;
- messages produced with acks=all by an idempotent producer are stored once and consumed in
  order per key; two groups each receive every message (a broadcast);
- the stats text protocol and the Prometheus metrics answer and parse.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TIMEOUT = 60


def start_server(binary, data_dir):
    server = subprocess.Popen(
        [binary, "serve", "--dir", data_dir, "--kafka", "127.0.0.1:0", "--stats", "127.0.0.1:0",
         "--metrics", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    line = server.stdout.readline()
    if not line.startswith("listening "):
        server.kill()
        raise SystemExit(f"serve did not start: {line!r}")
    ports = dict(part.split("=", 1) for part in line.split()[1:])
    return server, ports


def stop_server(server):
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        server.kill()
        raise SystemExit("serve did not stop within its time")
    if server.returncode != 0:
        raise SystemExit(f"serve exited with {server.returncode}")


# Time a member takes to handle one event, so that consumption lasts long enough for members
# to come, go and be rebalanced while events remain.
HANDLING_S = 0.003


def member(kind, bootstrap, group, out_path, stop_after_s, idle_s):
    """A group member in its own process: consumes `trades`, commits after each record it
    handles, writes one JSON line per delivery and per commit; stops after `stop_after_s`
    or once idle for `idle_s`."""
    script = os.path.abspath(__file__)
    return subprocess.Popen([sys.executable, script, "member", kind, bootstrap, group, out_path,
                             str(stop_after_s), str(idle_s)])


def run_member(kind, bootstrap, group, out_path, stop_after_s, idle_s):
    stop_after_s, idle_s = float(stop_after_s), float(idle_s)
    started = time.time()
    last_record = time.time()
    with open(out_path, "a") as out:
        def log(event, partition, offset):
            out.write(json.dumps({"event": event, "p": partition, "o": offset, "t": time.time()}) + "\n")
            out.flush()
        if kind == "confluent":
            from confluent_kafka import Consumer, TopicPartition
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                 "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                 "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
            consumer.subscribe(["trades"])
            while time.time() - started < stop_after_s and time.time() - last_record < idle_s:
                message = consumer.poll(0.2)
                if message is None:
                    continue
                if message.error():
                    raise SystemExit(f"consumer error: {message.error()}")
                last_record = time.time()
                log("delivered", message.partition(), message.offset())
                time.sleep(HANDLING_S)
                try:
                    consumer.commit(offsets=[TopicPartition("trades", message.partition(), message.offset() + 1)],
                                    asynchronous=False)
                except Exception:
                    # A rebalance under way refuses commits: the record stays uncommitted
                    # (inside the at-least-once window), as Kafka has it.
                    continue
                log("committed", message.partition(), message.offset())
            consumer.close()
        else:
            from kafka import KafkaConsumer, TopicPartition
            from kafka.structs import OffsetAndMetadata
            consumer = KafkaConsumer("trades", bootstrap_servers=bootstrap, group_id=group,
                                     auto_offset_reset="earliest", enable_auto_commit=False,
                                     session_timeout_ms=6000, heartbeat_interval_ms=500)
            while time.time() - started < stop_after_s and time.time() - last_record < idle_s:
                batches = consumer.poll(timeout_ms=200, max_records=50)
                for tp, records in batches.items():
                    for record in records:
                        last_record = time.time()
                        log("delivered", tp.partition, record.offset)
                        time.sleep(HANDLING_S)
                        try:
                            consumer.commit({TopicPartition("trades", tp.partition): OffsetAndMetadata(record.offset + 1, "", -1)})
                        except Exception:
                            continue
                        log("committed", tp.partition, record.offset)
            consumer.close()


def all_events(bootstrap, topic):
    """Every record of `topic`, read without a group from the beginning to the end."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-reader", "enable.auto.commit": False})
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records, done, deadline = [], set(), time.time() + TIMEOUT
    while len(done) < len(partitions) and time.time() < deadline:
        message = consumer.poll(0.5)
        for p in partitions:
            if consumer.position([TopicPartition(topic, p)])[0].offset >= ends[p]:
                done.add(p)
        if message is None or message.error():
            continue
        records.append((message.partition(), message.offset(), message.key(), message.value()))
    consumer.close()
    if len(done) < len(partitions):
        raise SystemExit(f"could not read {topic} to its end: {ends}")
    return records


def check_group_run(logs, expected):
    """Every expected event delivered; none delivered after a commit that covered it."""
    deliveries, first_commit = [], {}
    for path in logs:
        with open(path) as f:
            for line in f:
                entry = json.loads(line)
                key = (entry["p"], entry["o"])
                if entry["event"] == "delivered":
                    deliveries.append((entry["t"], key))
                else:
                    first_commit[key] = min(first_commit.get(key, entry["t"]), entry["t"])
    delivered = {key for (_, key) in deliveries}
    missing = expected - delivered
    assert not missing, f"{len(missing)} events never delivered, e.g. {sorted(missing)[:5]}"
    after_commit = [key for (t, key) in deliveries if key in first_commit and t > first_commit[key]]
    assert not after_commit, f"events delivered again after their commit: {after_commit[:5]}"
    return len(deliveries), len(deliveries) - len(delivered)


def check_stats(address):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = conn.recv(65536)
            assert chunk, "stats connection closed before END"
            data += chunk
    stats = {}
    for line in data.decode().splitlines()[:-1]:
        word, name, value = line.split(" ")
        assert word == "STAT", line
        stats[name] = float(value)
    for name in ["trades", "fsyncs", "records_per_fsync", "cache_hits", "half_messages", "disk_bytes", "uptime_seconds",
                 "shard.0.trades", "durable_flush_p99_seconds", "group_commit_records_p50", "activities_open",
                 "log_pieces", "log_pieces_compressed", "group.settle.0.consumer_lag"]:
        assert name in stats, f"stats has no {name}"
    assert stats["trades"] > 0 and stats["fsyncs"] > 0, stats
    return stats


def check_metrics(address):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        assert answer.status == 200
        body = answer.read().decode()
    families = {family.name: family for family in text_string_to_metric_families(body)}
    for name in ["tradeshard_trades", "tradeshard_fsyncs", "tradeshard_cache_hit_ratio", "tradeshard_consumer_lag",
                 "tradeshard_log_payload_raw_bytes", "tradeshard_log_payload_stored_bytes",
                 "tradeshard_kafka_request_duration_seconds", "tradeshard_kafka_requests"]:
        assert name in families, f"metrics have no {name}: {sorted(families)}"
    for name in ["tradeshard_kafka_request_duration_seconds", "tradeshard_durable_flush_seconds",
                 "tradeshard_group_commit_records"]:
        assert families[name].type == "histogram", (name, families[name].type)
    flushes = [s for s in families["tradeshard_group_commit_records"].samples if s.name.endswith("_count")]
    assert flushes and flushes[0].value > 0, flushes
    # Per shard only: an unlabelled total beside them would be counted twice by a sum.
    per_shard = families["tradeshard_trades"].samples
    assert per_shard and all("shard" in s.labels for s in per_shard), per_shard
    assert sum(s.value for s in per_shard) > 0, per_shard
    return len(families)


def messages_phase(bootstrap):
    from confluent_kafka import Consumer, Producer
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5})
    acked = []
    sent = 300

    def on_delivery(error, message):
        assert error is None, error
        acked.append(message.value())
    for i in range(sent):
        producer.produce("payments", key=f"merchant-{i % 10}".encode(), value=f"{i}".encode(), on_delivery=on_delivery)
    assert producer.flush(TIMEOUT) == 0, "messages left unacknowledged"
    assert len(acked) == sent, len(acked)
    stored = all_events(bootstrap, "payments")
    values = [int(v) for (_, _, _, v) in stored]
    assert sorted(values) == list(range(sent)), f"{len(values)} stored for {sent} sent"
    by_key = {}
    for (partition, offset, key, value) in sorted(stored, key=lambda r: (r[0], r[1])):
        by_key.setdefault(key, []).append(int(value))
    for key, values_of_key in by_key.items():
        assert values_of_key == sorted(values_of_key), f"{key} out of order: {values_of_key}"
    # A broadcast: every group gets every message.
    for group in ["audit-a", "audit-b"]:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
        consumer.subscribe(["payments"])
        got, deadline = set(), time.time() + TIMEOUT
        while len(got) < sent and time.time() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                got.add(int(message.value()))
        consumer.close()
        assert len(got) == sent, f"group {group} received {len(got)} of {sent}"
    return sent


def main(binary):
    work = tempfile.mkdtemp(prefix="tradeshard-kafka-e2e-")
    data_dir = os.path.join(work, "data")
    load = subprocess.run([binary, "load", "--dir", data_dir, "--workload", "ingest", "--ops", "3000"],
                          stdout=subprocess.DEVNULL, timeout=300)
    assert load.returncode == 0, "the load tool failed"
    server, ports = start_server(binary, data_dir)
    members = []
    try:
        bootstrap = ports["kafka"]
        expected = {(p, o) for (p, o, _, _) in all_events(bootstrap, "trades")}
        assert len(expected) >= 3000, len(expected)
        logs = [os.path.join(work, name) for name in ["a.log", "b.log", "c.log"]]
        # Two members split the partitions; b leaves after 3.5 s and a takes over its
        # partitions; a stops after 7 s, before the end.
        members = [member("confluent", bootstrap, "settle", logs[0], 7, 60),
                   member("python", bootstrap, "settle", logs[1], 3.5, 60)]
        for m in members:
            m.wait(timeout=120)
        assert all(m.returncode == 0 for m in members), [m.returncode for m in members]
        stop_server(server)
        server, ports = start_server(binary, data_dir)
        bootstrap = ports["kafka"]
        # A third member, after the restart, resumes from the committed offsets.
        third = member("python", bootstrap, "settle", logs[2], 60, 5)
        members.append(third)
        third.wait(timeout=120)
        assert third.returncode == 0
        deliveries, repeats = check_group_run(logs, expected)
        per_member = [sum(1 for line in open(log) if '"delivered"' in line) for log in logs]
        assert all(count > 0 for count in per_member), f"a member consumed nothing: {per_member}"
        sent = messages_phase(bootstrap)
        stats = check_stats(ports["stats"])
        families = check_metrics(ports["metrics"])
        print(f"kafka e2e: {len(expected)} trade events, {deliveries} deliveries to the group "
              f"(per member {per_member}; {repeats} repeats inside the at-least-once window), {sent} messages stored once "
              f"and broadcast to 2 groups, {len(stats)} stats, {families} metric families")
    finally:
        for m in members:
            if m.poll() is None:
                m.kill()
        if server.poll() is None:
            stop_server(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "member":
        run_member(*sys.argv[2:])
    else:
        main(sys.argv[1])
