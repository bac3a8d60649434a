"""Console accounts: the first-run sign-in page, `dicom-node users`, sessions that end on a
password change, login rate limiting, and the audit rows of account changes."""

from __future__ import annotations

import pytest

from dicom_node.users import LoginThrottle
from tests.console_helpers import PASSWORD, Client, add_user


@pytest.fixture
def bare_node(node_factory):
    """A node without a worker and without accounts."""
    return node_factory("accounts").start()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One node without a worker for the tests below; each uses its own user names."""
    from tests.peers import NodeProcess

    node = NodeProcess.create(tmp_path_factory.mktemp("accounts-shared")).start()
    yield node
    node.stop()


def cli(node, *args: str, stdin: str | None = None):
    import subprocess

    from tests.peers import dicom_node_command
    return subprocess.run([*dicom_node_command(), *args, "--config", str(node.config_path)],
                          input=stdin, text=True, capture_output=True, timeout=60, check=False)


def test_first_run_login_page_says_how_to_make_the_first_admin(bare_node) -> None:
    client = Client(bare_node.http_url)
    page = client.request("/")
    assert page.status == 303 and page.url.startswith("/login")
    login = client.request(page.url)
    assert "No console account exists yet" in login.body
    assert "dicom-node users add YOUR-NAME --role admin" in login.body
    assert add_user(bare_node.config_path, "ada", "admin").returncode == 0
    assert "No console account exists yet" not in client.request("/login").body


def test_users_cli_adds_lists_refuses_in_one_line_and_audits(shared_node) -> None:
    node = shared_node
    assert add_user(node.config_path, "ada", "admin").returncode == 0
    short = add_user(node.config_path, "bob", "viewer", password="short")
    assert short.returncode == 2 and "10..1024 characters" in short.stderr
    assert short.stderr.count("\n") == 1 and "Traceback" not in short.stderr
    last = cli(node, "users", "remove", "ada")
    assert last.returncode == 2 and "last admin" in last.stderr
    assert add_user(node.config_path, "vic", "viewer").returncode == 0
    listed = node.cli_json("users", "list")
    assert ("ada", "admin") in [(u["username"], u["role"]) for u in listed]
    assert ("vic", "viewer") in [(u["username"], u["role"]) for u in listed]
    assert cli(node, "users", "remove", "vic").returncode == 0
    assert "vic" not in [u["username"] for u in node.cli_json("users", "list")]

    admin = Client(node.http_url)
    assert admin.sign_in("ada").status == 303
    audit = admin.request("/audit?kind=user.").body
    assert audit.count("user.add") >= 2 and audit.count("user.remove") == 1
    assert ">cli<" in audit and PASSWORD not in audit


def test_password_change_ends_sessions_and_the_old_password(shared_node) -> None:
    assert add_user(shared_node.config_path, "pat", "admin").returncode == 0
    client = Client(shared_node.http_url)
    assert client.sign_in("pat").status == 303
    assert client.request("/").status == 200
    changed = cli(shared_node, "users", "passwd", "pat", "--password-stdin",
                  stdin="another long password\n")
    assert changed.returncode == 0, changed.stderr
    assert client.request("/").status == 303  # the session ended: back to sign-in
    assert client.sign_in("pat").status == 401
    assert client.sign_in("pat", "another long password").status == 303


def test_sign_in_is_rate_limited_after_five_failures(shared_node) -> None:
    assert add_user(shared_node.config_path, "tom", "viewer").returncode == 0
    client = Client(shared_node.http_url)
    for _ in range(5):
        wrong = client.sign_in("tom", "not the password")
        assert wrong.status == 401 and "User name or password is wrong" in wrong.body
    throttled = client.sign_in("tom")  # even the right password waits
    assert throttled.status == 429 and "Too many failed sign-ins" in throttled.body
    assert client.request("/").status == 303
    assert client.sign_in("my secret passphrase", "x").status == 401
    failed = [e["user"] for e in shared_node.events("console_login_failed")]
    assert failed.count("tom") == 5 and "(unknown name)" in failed
    assert "my secret passphrase" not in shared_node.log()
    assert "PHANTOM" not in shared_node.log()


@pytest.mark.parametrize(
    ("failures", "after_seconds", "allowed"),
    [(4, 0, True), (5, 0, False), (5, 299, False), (5, 301, True)],
)
def test_login_throttle_window(failures: int, after_seconds: float, allowed: bool) -> None:
    now = [1000.0]
    throttle = LoginThrottle(max_failures=5, window_seconds=300, clock=lambda: now[0])
    for _ in range(failures):
        throttle.failed("ada", "10.0.0.1")
    now[0] += after_seconds
    assert (throttle.wait_seconds("ada", "10.0.0.1") == 0) is allowed


def test_login_throttle_also_limits_one_address_trying_many_names() -> None:
    throttle = LoginThrottle(max_failures=5, window_seconds=300, clock=lambda: 0.0)
    for i in range(20):
        throttle.failed(f"user{i}", "10.0.0.9")
    assert throttle.wait_seconds("someone-new", "10.0.0.9") > 0
    assert throttle.wait_seconds("someone-new", "10.0.0.10") == 0


def test_healthz_stays_open_and_pages_need_sign_in(shared_node) -> None:
    client = Client(shared_node.http_url)
    assert client.request("/healthz").status == 200
    assert client.request("/readyz").status == 200
    assert client.request("/healthz/x").status == 404
    assert "There is no such page" in client.request("/no-such-page").body
    assert add_user(shared_node.config_path, "uma", "viewer").returncode == 0
    signed = Client(shared_node.http_url)
    assert signed.sign_in("uma").status == 303
    bad = signed.request("/studies?page=abc")
    assert bad.status == 400 and "wrong kind: page" in bad.body and "Traceback" not in bad.body
    missing = signed.request("/studies/1.2.999")
    assert missing.status == 404 and "no study with this Study Instance UID" in missing.body
    for path in ("/", "/studies", "/studies/1.2.3", "/studies/1.2.3/images/1.2.4.png",
                 "/destinations", "/audit"):
        answer = client.request(path)
        assert answer.status == 303 and answer.url.startswith("/login?next="), path


def test_tls_settings_go_together() -> None:
    from dicom_node.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="tls_certfile and http.tls_keyfile go together"):
        load_settings(environ={}, overrides={"http": {"tls_certfile": "/etc/cert.pem"}})


def test_console_over_https_sets_a_secure_session_cookie(node_factory, tmp_path) -> None:
    import ssl
    import subprocess
    import urllib.error
    import urllib.parse
    import urllib.request

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    node = node_factory("tls", http={"tls_certfile": str(cert), "tls_keyfile": str(key)})
    node.start()
    assert add_user(node.config_path, "ada", "admin").returncode == 0
    base = node.http_url.replace("http://", "https://")
    insecure = ssl.create_default_context(cafile=str(cert))
    insecure.check_hostname = False

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=insecure),
                                         NoRedirect())
    form = urllib.parse.urlencode({"username": "ada", "password": PASSWORD}).encode()
    try:
        opener.open(base + "/login", form, timeout=30)
    except urllib.error.HTTPError as answer:  # the 303 after signing in
        cookie = answer.headers["set-cookie"]
    assert "dicom_node_session=" in cookie
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert [e["scheme"] for e in node.events("http_listening")] == ["https"]
