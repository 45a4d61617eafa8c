"""dgemma-server (issue 12) as clients see it: the official `openai` client against a running server with
the bundled model (correct task answers, streaming included), error objects and status codes, the API
key, a client that disconnects, and a load test from a second process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pygguf_diffusion import bundled

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(bundled.bundled_model_path() is None, reason="needs the bundled model")
SERVER = [sys.executable, "-c", "import sys; from pygguf_diffusion.server.main import main; sys.exit(main())"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*SERVER, "--port", str(self.port), "-t", "1", "-s", "1", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        end = time.monotonic() + 60
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("the server did not come up")

    def client(self, key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def rss_kb(self) -> int:
        return int(next(l.split()[1] for l in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
                        if l.startswith("VmRSS")))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


def test_chat_and_completions_through_the_openai_client(server):
    c = server.client()
    model = c.models.list().data[0].id
    assert model == "tiny-diffusiongemma-F16"
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "12+34="}])
    assert r.choices[0].message.content.strip() == "46" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens >= 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    stream = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "sort: 42 7 19"}],
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == "7 19 42"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    # diffusion settings as extra body fields, OpenAI keywords as in the Python API
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "3+4="}], temperature=0,
                                  extra_body={"max_denoising_steps": 24, "top_k": 5})
    assert r.choices[0].message.content.strip() == "7"
    comp = c.completions.create(model=model, prompt="the hat", max_tokens=6)
    assert comp.choices[0].finish_reason == "length" and comp.usage.completion_tokens == 6
    parts = list(c.completions.create(model=model, prompt="the hat", max_tokens=6, stream=True))
    assert "".join(p.choices[0].text for p in parts) == comp.choices[0].text  # the server's seed: same text


def test_canvas_editing_fields_template_suffix_and_warm_start(server):
    c = server.client()
    sudoku = [{"role": "user", "content": "sudoku: 3.12 .2.. .321 .1.4"}]
    r = c.chat.completions.create(model="x", messages=sudoku, seed=0,
                                  extra_body={"template": "3{:1}12 {:1}2{:1}{:1} {:1}321 {:1}1{:1}4"})
    assert r.choices[0].message.content == "3412 1243 4321 2134"
    assert r.choices[0].model_extra["holes"] == ["4", "1", "4", "3", "4", "2", "3"]
    # OpenAI's insert mode: the completion is what fills the hole before the suffix
    prompt = "<|turn>user\n4821+377=<turn|>\n<|turn>model\n"
    r = c.completions.create(model="x", prompt=prompt, suffix="8", seed=0, extra_body={"hole_tokens": 4})
    assert r.choices[0].text == " 519"
    chunks = list(c.completions.create(model="x", prompt=prompt, suffix="8", seed=0, stream=True,
                                       extra_body={"hole_tokens": 4}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == " 519"
    r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "4821+377="}], seed=0,
                                  extra_body={"canvas": " 5199"})
    assert r.choices[0].message.content.strip() == "5198"
    for body, param in [({"template": "no hole"}, None), ({"template": "{}", "canvas": "x"}, None),
                        ({"frozen": [True]}, None)]:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="x", messages=sudoku, extra_body=body)
        assert e.value.status_code == 400
    with pytest.raises(openai.BadRequestError, match="hole_tokens"):
        c.completions.create(model="x", prompt=prompt, suffix="8", extra_body={"hole_tokens": 0})


def test_drafts_are_an_opt_in_event_standard_clients_never_see(server):
    body = {"messages": [{"role": "user", "content": "sort: 9 8 7 6 5"}], "stream": True,
            "stream_options": {"include_drafts": True}, "max_denoising_steps": 12}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    drafts = [json.loads(lines[i + 1][6:]) for i, line in enumerate(lines) if line == "event: draft"]
    assert drafts and drafts[0]["step"] == 1 and all("text" in d for d in drafts)
    assert lines[-1] == "data: [DONE]"
    plain = server.client().chat.completions.create(model="x", stream=True, messages=body["messages"],
                                                    extra_body={"max_denoising_steps": 12})
    assert all(ch.object == "chat.completion.chunk" for ch in plain)


def test_errors_are_openai_error_objects_and_the_server_stays_up(server):
    post = lambda path, **kw: httpx.post(server.url + path, timeout=30, **kw)  # noqa: E731
    r = post("/v1/chat/completions", content=b"{bad json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = post("/v1/chat/completions", json={"messages": "hello"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "1+1="}], "max_tokens": "x"})
    assert r.status_code == 400 and "max_new_tokens must be an integer" in r.json()["error"]["message"]
    r = post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "1+1="}], "n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x " * 5000}]})
    assert r.status_code == 400 and "prompt tokens and n_ctx 4096" in r.json()["error"]["message"]
    r = post("/v1/completions", json={"prompt": "x " * 5000})
    assert r.status_code == 400 and "n_ctx" in r.json()["error"]["message"]
    r = post("/v1/completions", json={"prompt": "x", "bogus": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "bogus"
    r = post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "1+1="}], "stream": True,
                                           "t_min": 2, "t_max": 1})
    assert r.status_code == 400 and "t_min" in r.json()["error"]["message"]  # a stream refused before it starts
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="x", messages=[{"role": "user", "content": "1+1="}],
                                                top_p=7.0)
    assert httpx.get(server.url + "/nope").status_code == 404
    ok = server.client().chat.completions.create(model="x", messages=[{"role": "user", "content": "2+2="}])
    assert ok.choices[0].message.content.strip() == "4"
    m = server.metrics()
    assert m['dgemma_requests_total{endpoint="/v1/chat/completions",status="400"}'] >= 6


def test_a_client_that_disconnects_stops_its_generation(server):
    before = server.metrics().get("dgemma_cancelled_total", 0)
    body = {"prompt": "the hat", "max_tokens": 4000, "max_denoising_steps": 500, "confidence_threshold": 1e-9,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        next(r.iter_lines())   # started
    t = time.monotonic()
    quick = server.client().chat.completions.create(model="x", messages=[{"role": "user", "content": "1+2="}])
    assert quick.choices[0].message.content.strip() == "3"  # served right after: the abandoned one stopped
    assert time.monotonic() - t < 20
    assert server.metrics()["dgemma_cancelled_total"] == before + 1


def test_the_api_key_guards_every_endpoint_but_health():
    s = Server(env={"DGEMMA_API_KEY": "s3cret"})
    try:
        assert httpx.get(s.url + "/health").status_code == 200
        for path in ("/v1/models", "/metrics", "/"):
            r = httpx.get(s.url + path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        r = s.client("s3cret").chat.completions.create(model="x", messages=[{"role": "user", "content": "5+5="}])
        assert r.choices[0].message.content.strip() == "10"
    finally:
        s.stop()


def test_a_port_in_use_and_bad_flags_are_error_lines_before_loading():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = subprocess.run([*SERVER, "--port", str(busy.getsockname()[1])], capture_output=True, text=True,
                           timeout=60)
    assert r.returncode == 1 and "error: cannot listen: 127.0.0.1:" in r.stderr and "Traceback" not in r.stderr
    for args, said in ((["-ot", "x=GPU7"], "no device 'GPU7' in use"), (["--steps", "0"], "--steps 0: must be >= 1"),
                       (["-m", "/nonexistent.gguf"], "no such file"), (["--port", "70000"], "must be in [1, 65535]")):
        r = subprocess.run([*SERVER, "--port", str(_free_port()), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "dgemma-cli" not in r.stderr


_LOAD = r'''
import concurrent.futures, json, random, sys, httpx
url, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(5)
jobs = [(rng.randint(0, 99), rng.randint(0, 99), rng.random() < 0.5) for _ in range(n)]

def ask(job):
    a, b, stream = job
    body = {"messages": [{"role": "user", "content": f"{a}+{b}="}], "stream": stream}
    with httpx.Client(timeout=300) as c:
        if not stream:
            r = c.post(url + "/v1/chat/completions", json=body)
            return r.status_code, r.json()["choices"][0]["message"]["content"].strip(), str(a + b)
        text = ""
        with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    d = json.loads(line[6:])["choices"]
                    text += (d[0]["delta"].get("content") or "") if d else ""
        return r.status_code, text.strip(), str(a + b)

with concurrent.futures.ThreadPoolExecutor(workers) as ex:
    out = list(ex.map(ask, jobs))
print(json.dumps({"answered": sum(s == 200 for s, _, _ in out), "correct": sum(g == e for _, g, e in out)}))
'''


@pytest.mark.slow
def test_load_from_a_second_process_all_answered_none_lost_rss_flat(server):
    for _ in range(20):  # warm up: allocator pools, the first graphs
        server.client().chat.completions.create(model="x", messages=[{"role": "user", "content": "1+1="}])
    rss0 = server.rss_kb()
    r = subprocess.run([sys.executable, "-c", _LOAD, server.url, "240", "8"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["answered"] == 240 and got["correct"] >= 0.9 * 240, got  # the bundled model's addition accuracy
    growth_mb = (server.rss_kb() - rss0) / 1024
    assert growth_mb < 40, f"RSS grew {growth_mb:.1f} MB over 240 requests"
    assert server.metrics()["dgemma_queue_length"] == 0


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver")
    import shutil

    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,700"):
        opts.add_argument(a)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))


def test_the_web_page_chats_and_shows_the_canvas_in_a_real_browser(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    d = _chrome()
    try:
        d.get(server.url + "/")
        wait = WebDriverWait(d, 60)
        wait.until(lambda d: "tiny-diffusiongemma" in d.find_element(By.ID, "model").text)
        # count the draft paints while they happen: the canvas is shown step by step, then cleared
        d.execute_script("""window.drafts = 0; new MutationObserver(ms => ms.forEach(m => {
            const el = m.target.nodeType === 3 ? m.target.parentElement : m.target;
            if (el && el.classList.contains('draft') && el.textContent) window.drafts++;
        })).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});""")
        box = d.find_element(By.ID, "input")
        for question, answer in (("12+34=", "46"), ("sort: 42 7 19", "7 19 42")):
            d.find_element(By.ID, "clear").click()   # the tiny model answers single-turn questions
            box.send_keys(question, Keys.ENTER)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-done='1']"))
            assert [e.text for e in d.find_elements(By.CSS_SELECTOR, ".user")] == [question]
            assert d.find_element(By.CSS_SELECTOR, ".assistant").text.strip() == answer
        assert d.execute_script("return window.drafts") > 0
        shots = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
        shots.mkdir(parents=True, exist_ok=True)
        assert d.save_screenshot(str(shots / "server-page.png"))   # kept for a person to look at
    finally:
        d.quit()


def test_sigterm_with_a_live_stream_stops_the_server_within_seconds():
    import signal
    import threading

    s = Server()
    body = {"prompt": "x", "max_tokens": 4000, "max_denoising_steps": 500, "confidence_threshold": 1e-9,
            "stream": True}

    def listen():
        try:
            with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=120) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    time.sleep(1.5)
    start = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    rc = s.proc.wait(timeout=60)
    assert time.monotonic() - start < 15   # the stream is cut after a 3 s grace, its generation stops
    assert rc in (0, -signal.SIGTERM), s.proc.stderr.read()[-2000:]   # uvicorn re-raises the signal it caught
