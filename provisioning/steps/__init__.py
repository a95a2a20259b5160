"""The saga: one ordered list drives "Step N/M" everywhere."""

from django.conf import settings

from provisioning.steps.activate import MarkActive
from provisioning.steps.base import Step, parse_budgets
from provisioning.steps.emails import SendWelcomeEmails
from provisioning.steps.identity import AllocateIdentity
from provisioning.steps.network import AllocateNetwork
from provisioning.steps.readiness import WaitReady
from provisioning.steps.schema import SeedSchema
from provisioning.steps.storage import AllocateStorage
from provisioning.steps.validate import Validate
from provisioning.steps.workloads import DeployWorkloads

STEPS: list[Step] = [
    Validate(),
    AllocateStorage(),
    AllocateIdentity(),
    AllocateNetwork(),
    SeedSchema(),
    DeployWorkloads(),
    WaitReady(),
    MarkActive(),
    SendWelcomeEmails(),
]
# bench/engine.py's steps that do nothing; the settings refuse them outside a benchmark.
if settings.PROVISIONING_STEP_SET == "noop":
    from provisioning.steps.noop import noop_steps

    STEPS = noop_steps(STEPS)
STEP_IDS = [step.id for step in STEPS]
BY_ID = {step.id: step for step in STEPS}
TOTAL = len(STEPS)
CREATING_STEP_IDS = tuple(step.id for step in STEPS if step.creates)


def step_at(position: int) -> Step:
    """Positions are 1-based, as operators read them ("Step 3/9")."""
    return STEPS[position - 1]


def label_of(step_id: str) -> str:
    step = BY_ID.get(step_id)
    return step.label if step else step_id


def position_of(step_id: str) -> int | None:
    return STEP_IDS.index(step_id) + 1 if step_id in STEP_IDS else None


def validate_step_budgets(value) -> dict[str, dict]:
    """Plan.step_budgets checked against this saga's steps; raises InvalidBudgets."""
    return parse_budgets(value, STEP_IDS)
