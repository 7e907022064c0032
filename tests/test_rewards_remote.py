"""Remote reward services on real loopback sockets: the wire format (rewards/transport.py), flowray's own
server (`python -m rewards serve`, a subprocess on port 0) behind the `remote` scorer, and both clients
(`remote`, `openai_judge`) against fault-injecting servers (tests/fault_http.py): timeouts, HTTP 500s, slow
answers and malformed JSON. Every image is scored exactly once or left unscored; retries never score twice."""

from __future__ import annotations

import base64
import http.client
import io
import pickle
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from rewards.base import ScorerInputError, build_scorer
from rewards.shapes import all_records, render, sample_scene
from rewards.transport import Limits, TransportError, decode_images, encode_images, parse_request
from tests.fault_http import REPO_ROOT, FaultServer, forward_to, served

pytestmark = pytest.mark.component

TOKEN = "s3cret-token"
FAST = {"timeout_s": 0.5, "retries": 2, "backoff_s": 0.01}  # the fault servers hang for 1 s


def _shapes(n: int, seed: int = 0):
    """n shapes renders with their GenEval records; every third image blank (reward 0), so scores vary."""
    rng = np.random.default_rng(seed)
    records = [r for rs in all_records().values() for r in rs][:n]
    images = np.stack([render(sample_scene(r, rng)) for r in records])
    images[::3] = 0
    return images, [r["prompt"] for r in records], records


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with served("shapes_geneval", token=TOKEN, tmp_path=tmp_path_factory.mktemp("serve")) as url:
        yield url


def _stats(url: str) -> dict:
    return httpx.get(url + "/stats", headers={"Authorization": f"Bearer {TOKEN}"}).json()


def _token_file(tmp_path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return str(path)


# -- the wire format -------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["png", "safetensors"])
def test_images_round_trip_exactly(encoding):
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_images(encode_images(images, encoding), Limits()), images)


def _png(array: np.ndarray, mode: str) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _st(**tensors) -> str:
    from safetensors.numpy import save

    return base64.b64encode(save(tensors)).decode()


RGB = np.zeros((4, 4, 3), np.uint8)


@pytest.mark.parametrize(("images", "message"), [
    ({"format": "pickle", "data": base64.b64encode(pickle.dumps(RGB)).decode()}, "format"),
    ({"format": "safetensors", "data": base64.b64encode(pickle.dumps(RGB)).decode()}, "not a safetensors file"),
    ({"format": "png", "data": ["not base64!"]}, "not valid base64"),
    ({"format": "png", "data": [_png(np.zeros((4, 4, 4), np.uint8), "RGBA")]}, "8-bit RGB PNG"),
    ({"format": "png", "data": [_png(RGB, "RGB"), _png(np.zeros((5, 4, 3), np.uint8), "RGB")]}, "share a size"),
    ({"format": "png", "data": [_png(np.zeros((4, 65, 3), np.uint8), "RGB")]}, "larger than the server's 64 px"),
    ({"format": "png", "data": [_png(RGB, "RGB")] * 9}, "more than the server's 8"),
    ({"format": "safetensors", "data": _st(images=np.zeros((1, 4, 4, 3), np.float32))}, "must be uint8"),
    ({"format": "safetensors", "data": _st(images=np.zeros((1, 4, 4), np.uint8))}, r"\[B, H, W, 3\]"),
    ({"format": "safetensors", "data": _st(images=RGB[None], extra=RGB)}, "exactly one tensor"),
])
def test_bad_images_are_refused_with_a_clear_error(images, message):
    with pytest.raises(TransportError, match=message):
        decode_images(images, Limits(max_images=8, max_side=64))


def test_a_remote_scorers_required_options_are_checked_at_config_load():
    from rewards.config import RewardsConfig

    with pytest.raises(ValueError, match=r"options: scorer 'remote' needs option\(s\) \['url'\]"):
        RewardsConfig.model_validate({"scorers": [{"name": "remote"}]})
    with pytest.raises(ValueError, match=r"'openai_judge' needs option\(s\) \['served_model'\]"):
        RewardsConfig.model_validate({"scorers": [{"name": "openai_judge", "options": {"url": "http://h/v1"}}]})
    RewardsConfig.model_validate({"scorers": [{"name": "remote", "options": {"url": "http://127.0.0.1:8790"}}]})


def test_request_lengths_must_agree():
    body = {"prompts": ["a", "b"], "images": encode_images(np.zeros((1, 4, 4, 3), np.uint8), "png")}
    with pytest.raises(TransportError, match="1 images, 2 prompts"):
        parse_request(body, Limits())


# -- flowray's own server --------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["png", "safetensors"])
def test_served_scorer_scores_as_in_process(server, tmp_path, encoding):
    images, prompts, records = _shapes(10)
    local = build_scorer("shapes_geneval")(images, prompts, records)
    remote = build_scorer("remote", url=server, token_file=_token_file(tmp_path), scorer="shapes_geneval",
                          encoding=encoding, images_per_request=4)
    result = remote(images, prompts, records)
    np.testing.assert_array_equal(result.reward, local.reward)
    assert result.valid.all() and set(result.diagnostics) == set(local.diagnostics)
    for name, values in local.diagnostics.items():
        np.testing.assert_array_equal(result.diagnostics[name], values)


def test_the_server_checks_its_token_and_the_client_its_scorer(server, tmp_path):
    images, prompts, records = _shapes(2)
    with pytest.raises(ScorerInputError, match="HTTP 401"):
        build_scorer("remote", url=server)(images, prompts, records)  # refused at once, not retried
    misrouted = build_scorer("remote", url=server, token_file=_token_file(tmp_path), scorer="ocr")
    with pytest.raises(ScorerInputError, match="serves scorer 'shapes_geneval', the config expects 'ocr'"):
        misrouted(images, prompts, records)
    assert httpx.get(server + "/health").status_code == 401


def test_the_server_refuses_bad_bodies_before_reading_them(server):
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("POST", "/score")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(2**40))  # nothing follows: the server must not wait for it
    connection.endheaders()
    reply = connection.getresponse()
    assert reply.status == 413 and b"more than the server's" in reply.read()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(server + "/score", content=b"\x80garbage", headers=headers).status_code == 400
    images, prompts, _ = _shapes(1)
    answer = httpx.post(server + "/score", headers=headers, json={  # no GenEval records: the scorer's input error
        "prompts": prompts, "images": encode_images(images, "png")})
    assert answer.status_code == 400 and "lacks GenEval" in answer.json()["error"]


def test_a_non_loopback_address_needs_a_token():
    from rewards.serve import check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    done = subprocess.run([sys.executable, "-m", "rewards", "serve", "--scorer", "shapes_geneval", "--host", "0.0.0.0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "needs --token-file" in done.stderr
    check_bind("0.0.0.0", TOKEN)


# -- the remote client through faults --------------------------------------------------------------------

def test_remote_through_faults_scores_each_image_once_or_leaves_it_unscored(server, tmp_path):
    """8 requests of 2 images. Requests 0-3 meet one fault on their first try (500, malformed JSON, a
    timeout, a slow answer the server did score), request 5 fails every try; the rest pass at once."""
    schedule = {0: ["500"], 1: ["malformed"], 2: ["timeout"], 3: ["slow"], 5: ["500", "timeout", "malformed"]}
    faults = FaultServer(forward_to(server, TOKEN), key=lambda body: body["request_id"],
                         schedule=lambda key, i, attempt: (schedule.get(i, []) + [None] * 3)[attempt], hang_s=1.0)
    try:
        images, prompts, records = _shapes(16)
        before = _stats(server)
        remote = build_scorer("remote", url=faults.url, token_file=_token_file(tmp_path), images_per_request=2,
                              max_in_flight=1, **FAST)  # one at a time: request i is the i-th chunk
        result = remote(images, prompts, records)
        after = _stats(server)
    finally:
        faults.shutdown()
    local = build_scorer("shapes_geneval")(images, prompts, records)
    unscored = np.zeros(16, dtype=bool)
    unscored[10:12] = True  # request 5's images
    assert result.valid.tolist() == (~unscored).tolist()
    np.testing.assert_array_equal(result.reward[~unscored], local.reward[~unscored])
    assert np.isnan(result.reward[unscored]).all() and "after 3 tries" in result.errors[0]
    tries = [len(faults.faults[k]) for k in sorted(faults.order, key=faults.order.get)]
    assert tries == [2, 2, 2, 2, 1, 3, 1, 1] and remote.client.attempts == sum(tries)
    # The slow answer was scored, lost and asked again: answered from the server's cache, not scored twice.
    assert after["images_scored"] - before["images_scored"] == int(result.valid.sum()) == 14
    assert after["cache_hits"] - before["cache_hits"] == 1


# -- the OpenAI-compatible judge -------------------------------------------------------------------------

def test_yes_no_and_score_parsing_is_strict():
    from rewards.openai_judge import MalformedAnswer, p_yes_from_logprobs, parse_score, parse_yes_no

    top = [{"token": " Yes", "logprob": np.log(0.6)}, {"token": "yes", "logprob": np.log(0.1)},
           {"token": "No", "logprob": np.log(0.2)}, {"token": "Maybe", "logprob": np.log(0.1)}]
    assert p_yes_from_logprobs(top) == pytest.approx(0.7 / 0.9)
    assert p_yes_from_logprobs([{"token": "The", "logprob": -0.1}]) is None and p_yes_from_logprobs(None) is None
    assert parse_yes_no("Yes.") == 1.0 and parse_yes_no(" no, it does not") == 0.0
    assert parse_score(" 7 ", 1, 10) == 7.0 and parse_score("8.5", 1, 10) == 8.5
    for text in ("maybe", "", "yesterday"):
        with pytest.raises(MalformedAnswer):
            parse_yes_no(text)
    for text in ("7/10", "Score: 7", "7 out of 10", "11", "0.5e1x"):
        with pytest.raises(MalformedAnswer):
            parse_score(text, 1, 10)


def _judge_server(replies: dict, schedule: dict, seen: list, hang_s: float = 1.0) -> FaultServer:
    """A chat-completions server: the reply to a question is replies[question], one of ("logprobs", p_yes),
    ("text", answer), ("error", status); schedule[question]: the faults of its first tries."""

    def answer(body):
        seen.append(body)
        question = body["messages"][0]["content"][1]["text"]
        kind, value = replies[question]
        if kind == "error":
            return value, {"error": {"message": "model 'judge' does not exist"}}
        reply = {"choices": [{"message": {"role": "assistant", "content": value if kind == "text" else "Yes"}}]}
        if kind == "logprobs":
            reply["choices"][0]["logprobs"] = {"content": [{"token": "Yes", "logprob": float(np.log(value)),
                "top_logprobs": [{"token": "Yes", "logprob": float(np.log(value))},
                                 {"token": "No", "logprob": float(np.log(1 - value))}]}]}  # fmt: skip
        return 200, reply

    return FaultServer(answer, key=lambda body: body["messages"][0]["content"][1]["text"],
                       schedule=lambda key, i, attempt: (schedule.get(key, []) + [None] * 3)[attempt], hang_s=hang_s)


def test_openai_judge_reads_p_yes_through_faults_and_never_scores_a_bad_answer():
    questions = [f"Is this p{i}?" for i in range(7)]
    replies = dict(zip(questions, [("logprobs", 0.8), ("logprobs", 0.25), ("text", "Yes."), ("text", "no"),
                                   ("text", "I cannot tell"), ("logprobs", 0.5), ("text", "yes")], strict=True))
    faults = [["500"], ["malformed"], ["timeout"], ["slow"], [], [], ["timeout", "500", "malformed"]]
    schedule = dict(zip(questions, faults, strict=True))
    seen: list = []
    judge_server = _judge_server(replies, schedule, seen)
    try:
        judge = build_scorer("openai_judge", served_model="judge", url=judge_server.url + "/v1",
                             template="Is this {prompt}?", **FAST)
        images = np.random.default_rng(0).integers(0, 256, (7, 6, 5, 3), dtype=np.uint8)
        result = judge(images, [f"p{i}" for i in range(7)], None)
    finally:
        judge_server.shutdown()
    np.testing.assert_allclose(result.reward[[0, 1, 2, 3, 5]], [0.8, 0.25, 1.0, 0.0, 0.5])
    assert result.valid.tolist() == [True, True, True, True, False, True, False]
    assert result.diagnostics["from_logprobs"][[0, 1, 2, 5]].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert any("not a yes/no answer: 'I cannot tell'" in e for e in result.errors)
    assert any("after 3 tries" in e for e in result.errors)
    tries = {k: len(v) for k, v in judge_server.faults.items()}
    assert tries == {"Is this p0?": 2, "Is this p1?": 2, "Is this p2?": 2, "Is this p3?": 2, "Is this p4?": 1,
                     "Is this p5?": 1, "Is this p6?": 3}  # a malformed answer (p4) is not asked again
    body = seen[0]
    assert body["model"] == "judge" and body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    index = int(body["messages"][0]["content"][1]["text"][len("Is this p"):-1])
    from PIL import Image

    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    np.testing.assert_array_equal(decoded, images[index])  # the judge sees the sample, losslessly


def test_openai_judge_scores_numbers_strictly_and_picks_templates_by_tag():
    replies = {"Rate a: counting": ("text", "7"), "Rate b: counting": ("text", "7/10"), "Colour of c?": ("text", "10")}
    seen: list = []
    judge_server = _judge_server(replies, {}, seen)
    try:
        judge = build_scorer("openai_judge", served_model="judge", url=judge_server.url + "/v1", answer="score",
                             template="Rate {prompt}: {tag}", tag_templates={"colors": "Colour of {prompt}?"}, **FAST)
        images = np.zeros((3, 4, 4, 3), np.uint8)
        result = judge(images, ["a", "b", "c"], [{"tag": "counting"}, {"tag": "counting"}, {"tag": "colors"}])
    finally:
        judge_server.shutdown()
    assert result.valid.tolist() == [True, False, True]
    np.testing.assert_allclose(result.reward[[0, 2]], [6 / 9, 1.0])
    assert result.diagnostics["raw"][0] == 7.0 and "not a single number: '7/10'" in result.errors[0]
    assert "logprobs" not in seen[0] and seen[0]["max_tokens"] == 8


def test_openai_judge_stops_on_a_refusal_with_the_services_message():
    judge_server = _judge_server({"Is x?": ("error", 404)}, {}, [])
    try:
        judge = build_scorer("openai_judge", served_model="judge", url=judge_server.url + "/v1",
                             template="Is {prompt}?", **FAST)
        with pytest.raises(ScorerInputError, match="HTTP 404.*does not exist"):
            judge(np.zeros((1, 4, 4, 3), np.uint8), ["x"], None)
        with pytest.raises(ScorerInputError, match="lacks or is malformed.*'tag'"):
            build_scorer("openai_judge", served_model="judge", template="{tag}")(np.zeros((1, 4, 4, 3), np.uint8),
                                                                                 ["x"], None)
    finally:
        judge_server.shutdown()


def test_requests_in_flight_never_exceed_the_limit():
    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def answer(body):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return 200, {"choices": [{"message": {"content": "yes"}}]}

    slow = FaultServer(answer, key=lambda body: body["messages"][0]["content"][1]["text"], schedule=lambda *_: None)
    try:
        judge = build_scorer("openai_judge", served_model="judge", url=slow.url + "/v1", max_in_flight=3)
        result = judge(np.zeros((12, 4, 4, 3), np.uint8), [f"p{i}" for i in range(12)], None)
    finally:
        slow.shutdown()
    assert result.valid.all() and state["peak"] == 3
