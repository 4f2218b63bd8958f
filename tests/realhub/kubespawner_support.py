"""A real hub whose spawner is KubeSpawner with its own profile form, minus Kubernetes; and the browser steps
that fill that form.

``LocalKubeSpawner`` subclasses the environment's ``kubespawner.KubeSpawner``: the form's rendering,
``options_from_form``, profile handling and ``load_user_options`` (choice and unlisted-choice validation,
overrides) are KubeSpawner's own. Only ``start``/``stop``/``poll``/``progress`` and the state are replaced:
``start`` loads the user's options the way KubeSpawner's would, then hands out the hub's shared stand-in
server instead of creating a pod. KubeSpawner's ``__init__`` still loads a Kubernetes config: a dummy
kubeconfig pointing at https://127.0.0.1:9, where nothing listens; a request there fails at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from browser_support import Browser

from devtools.devhub import LocalHub

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "deploy" / "z2jh" / "gpu-lab-profiles.yaml"
POLICY = REPO / "policies" / "examples" / "gpu-lab.yaml"
NOWHERE = "https://127.0.0.1:9"


@dataclass(frozen=True)
class HubEnvironment:
    """A Python environment a lab's hub runs in, and the JupyterHub and KubeSpawner versions it must have."""

    name: str
    python: Path
    jupyterhub: str  # a version prefix: "6." or "5.5."
    kubespawner: str  # a version prefix or an exact version


ENVIRONMENTS = {
    "latest": HubEnvironment("latest", Path(sys.executable), "6.", "7.1."),
    "z2jh-4.4": HubEnvironment("z2jh-4.4", REPO / ".venv-z2jh-4.4" / "bin" / "python", "5.5.", "7.0.0"),
}


def installed_versions(python: Path | str) -> dict[str, str]:
    """The JupyterHub and KubeSpawner versions importable by ``python``."""
    code = "import json, jupyterhub, kubespawner; print(json.dumps([jupyterhub.__version__, kubespawner.__version__]))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{python} cannot import jupyterhub and kubespawner: {done.stderr[-1000:]}"
    jupyterhub, kubespawner = json.loads(done.stdout)
    return {"jupyterhub": jupyterhub, "kubespawner": kubespawner}


def matches(version: str, wanted: str) -> bool:
    return version.startswith(wanted) if wanted.endswith(".") else version == wanted


SPAWNER = f'''
import json as _json
import yaml as _yaml
from kubespawner import KubeSpawner as _KubeSpawner


class LocalKubeSpawner(_KubeSpawner):
    """KubeSpawner's form and options; the server is the hub's shared stand-in instead of a pod."""

    local_running = False

    async def start(self):
        await self.load_user_options()
        applied = {{"image": self.image, "cpu_limit": self.cpu_limit, "node_selector": self.node_selector,
                   "extra_resource_limits": self.extra_resource_limits}}
        self.log.info("local-kubespawner start user=%s applied=%s", self.user.name, _json.dumps(applied))
        self.local_running = True
        return await _cheap_url()

    async def stop(self, now=False):
        self.local_running = False

    async def poll(self):
        return None if self.local_running else 0

    async def progress(self):
        return
        yield

    def get_state(self):
        state = super().get_state()
        if self.local_running:
            state["local_running"] = True
        return state

    def load_state(self, state):
        super().load_state(state)
        self.local_running = bool(state.get("local_running"))

    def clear_state(self):
        super().clear_state()
        self.local_running = False


with open({str(PROFILES)!r}) as _profiles:
    c.KubeSpawner.profile_list = _yaml.safe_load(_profiles)["singleuser"]["profileList"]
c.KubeSpawner.namespace = "lab"
c.KubeSpawner.start_timeout = 20
c.JupyterHub.spawner_class = LocalKubeSpawner
'''

KUBECONFIG = f"""\
apiVersion: v1
kind: Config
clusters:
  - name: nowhere
    cluster: {{server: "{NOWHERE}"}}
users:
  - name: nobody
    user: {{token: not-a-real-token}}
contexts:
  - name: nowhere
    context: {{cluster: nowhere, user: nobody, namespace: lab}}
current-context: nowhere
"""


def kubernetes_env(hub: LocalHub) -> dict[str, str | None]:
    """The hub's Kubernetes environment: the dummy kubeconfig (written into its workdir), not in a cluster."""
    hub.workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = hub.workdir / "kubeconfig.yaml"
    kubeconfig.write_text(KUBECONFIG)
    return {"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": None, "KUBERNETES_SERVICE_PORT": None}


def applied_overrides(log: str, user: str) -> dict[str, object]:
    """What ``load_user_options`` applied at ``user``'s last start, from LocalKubeSpawner's log line."""
    marker = f"local-kubespawner start user={user} applied="
    lines = [line for line in log.splitlines() if marker in line]
    assert lines, f"no start of {user} logged by LocalKubeSpawner"
    found: dict[str, object] = json.loads(lines[-1].split(marker, 1)[1])
    return found


# -- the spawn form in the browser --------------------------------------------------------------------


@dataclass(frozen=True)
class FormChoice:
    """What a user does on KubeSpawner's form: a profile (None: leave the default) and its options;
    ``typed`` are free-form values entered under an option's "Other..." choice."""

    profile: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    typed: dict[str, str] = field(default_factory=dict)


def _select(slug: str, option: str) -> str:
    return json.dumps(f'select[name="profile-option-{slug}--{option}"]')


def _other_input(slug: str, option: str) -> str:
    return json.dumps(f'input[data-name="profile-option-{slug}--{option}--unlisted-choice"]')


async def open_spawn_form(browser: Browser, hub_url: str) -> None:
    await browser.call("Page.navigate", url=hub_url + "/hub/spawn")
    await browser.until(
        "document.querySelector('form#spawn_form #kubespawner-profiles-list') !== null", "KubeSpawner's spawn form"
    )


async def choose(browser: Browser, slug: str, option: str, value: str) -> None:
    """Pick ``value`` in a profile option's <select> and fire the DOM change event the form's script handles."""
    chosen = await browser.evaluate(
        f"(() => {{ const select = document.querySelector({_select(slug, option)});"
        f" select.value = {json.dumps(value)};"
        " select.dispatchEvent(new Event('change', {bubbles: true})); return select.value; })()"
    )
    assert chosen == value, f"the form has no choice {value!r} for {slug}/{option} (it shows {chosen!r})"


async def type_other(browser: Browser, slug: str, option: str, text: str) -> None:
    """Choose "Other..." for an option, then type ``text`` into the free-form field the page reveals."""
    await choose(browser, slug, option, "unlisted-choice")
    shown = await browser.evaluate(
        f"(() => {{ const input = document.querySelector({_other_input(slug, option)});"
        " input.scrollIntoView({block: 'center'}); input.focus();"
        " return document.activeElement === input && input.offsetParent !== null; })()"
    )
    assert shown, f'the page did not reveal the "Other..." field of {slug}/{option}'
    await browser.call("Input.insertText", text=text)


async def fill(browser: Browser, choice: FormChoice) -> dict[str, str]:
    """Fill the open form as ``choice`` says; returns the form data the browser would submit."""
    if choice.profile is not None:
        await browser.evaluate(f"document.querySelector({json.dumps('#profile-item-' + choice.profile)}).click()")
        for option, value in choice.options.items():
            await choose(browser, choice.profile, option, value)
        for option, text in choice.typed.items():
            await type_other(browser, choice.profile, option, text)
    data: dict[str, str] = await browser.evaluate(
        "Object.fromEntries([...new FormData(document.querySelector('form#spawn_form')).entries()]"
        ".filter(([key]) => key !== '_xsrf'))"
    )
    return data


async def submit(browser: Browser) -> None:
    """Press Start (the browser checks the fields' patterns first, like a user's click)."""
    valid = await browser.evaluate("document.querySelector('form#spawn_form').checkValidity()")
    assert valid, "the browser finds the spawn form invalid"
    await browser.evaluate("document.querySelector('form#spawn_form button[type=submit]').click(); true")
    await browser.until(
        "!document.location.pathname.startsWith('/hub/spawn/') && document.location.pathname !== '/hub/spawn'",
        "the form's submission to leave the page",
    )
