"""A telco population in the IBM Telco schema, simulated month by month.

Customers arrive, age, churn from a latent model and leave; retention offers lower the
churn of the customers they reach; at a chosen month the market shifts: a competitor's
fibre offer pulls long-contract fibre customers away and changes who signs up. The
churn reference application uses it to show decay, drift and recovery on simulated time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ADDONS = ["OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport"]
STREAMING = ["StreamingTV", "StreamingMovies"]
PAYMENT = [
    "Electronic check",
    "Mailed check",
    "Bank transfer (automatic)",
    "Credit card (automatic)",
]
COLUMNS = [
    "customerID",
    "gender",
    "SeniorCitizen",
    "Partner",
    "Dependents",
    "tenure",
    "PhoneService",
    "MultipleLines",
    "InternetService",
    *ADDONS,
    *STREAMING,
    "Contract",
    "PaperlessBilling",
    "PaymentMethod",
    "MonthlyCharges",
    "TotalCharges",
]


@dataclass(frozen=True)
class Market:
    """Who signs up and what drives churn; the shift swaps one market for another."""

    fiber_share: float = 0.44
    month_to_month_share: float = 0.55
    electronic_check_share: float = 0.34
    intercept: float = -4.3
    month_to_month: float = 3.45
    two_year: float = -2.76
    fiber: float = 1.61
    long_contract_fiber: float = 0.0
    tenure_per_year: float = -0.8
    electronic_check: float = 1.38
    senior: float = 0.69
    support: float = -1.15
    charge_per_10: float = 0.28


BEFORE_SHIFT = Market()
# A competitor's fibre bundle: contracts stop protecting fibre customers and new sign-ups skew
# to fibre on electronic check — the model's best signals now point the wrong way.
AFTER_SHIFT = Market(
    fiber_share=0.62,
    month_to_month_share=0.45,
    electronic_check_share=0.5,
    intercept=-2.6,
    month_to_month=0.5,
    two_year=-0.3,
    fiber=0.5,
    long_contract_fiber=2.8,
    tenure_per_year=-0.05,
)

# A shift no model can follow: who churns no longer depends on anything the data records
# (a price war that pulls customers at random), and many more leave.
UNPREDICTABLE = Market(
    fiber_share=0.5,
    intercept=-0.55,
    month_to_month=0.0,
    two_year=0.0,
    fiber=0.0,
    tenure_per_year=0.0,
    electronic_check=0.0,
    senior=0.0,
    support=0.0,
    charge_per_10=0.0,
)
SCENARIOS = {"recoverable": AFTER_SHIFT, "persistent": UNPREDICTABLE}


@dataclass
class Population:
    """The active customers and the simulator's random state."""

    seed: int = 7
    size: int = 4000
    shift_month: int | None = 7
    revert_month: int | None = None  # the month the old market returns (None: never)
    offer_effect: float = 0.35  # relative drop in churn probability for a reached customer
    after: Market = AFTER_SHIFT  # the market once it has shifted
    month: int = 0
    customers: pd.DataFrame = field(default_factory=pd.DataFrame)
    _next_id: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        if self.customers.empty:
            self.customers = self.new_customers(self.size, BEFORE_SHIFT, existing=True)

    @property
    def market(self) -> Market:
        shifted = self.shift_month is not None and self.month >= self.shift_month
        reverted = self.revert_month is not None and self.month >= self.revert_month
        return self.after if shifted and not reverted else BEFORE_SHIFT

    def _ids(self, n: int) -> list[str]:
        start = self._next_id
        self._next_id += n
        letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        rng = np.random.default_rng(self.seed * 1_000_003 + start)
        tails = ["".join(t) for t in rng.choice(letters, size=(n, 5))]
        return [f"{(start + i) % 10000:04d}-{t}" for i, t in enumerate(tails)]

    def new_customers(self, n: int, market: Market, *, existing: bool = False) -> pd.DataFrame:
        """Customers in the Telco schema; ``existing`` ones already have some tenure."""
        r = self.rng
        pick = lambda choices, p: r.choice(np.array(choices, dtype=object), size=n, p=p)  # noqa: E731
        internet = pick(
            ["Fiber optic", "DSL", "No"],
            [market.fiber_share, (1 - market.fiber_share) * 0.6, (1 - market.fiber_share) * 0.4],
        )
        has_net = internet != "No"
        phone = pick(["Yes", "No"], [0.9, 0.1])
        m2m = market.month_to_month_share
        contract = pick(
            ["Month-to-month", "One year", "Two year"], [m2m, (1 - m2m) * 0.47, (1 - m2m) * 0.53]
        )
        e = market.electronic_check_share
        payment = pick(PAYMENT, [e, (1 - e) / 3, (1 - e) / 3, (1 - e) / 3])
        tenure = np.minimum(r.exponential(24, n), 72).astype(int) if existing else np.zeros(n, int)
        frame = pd.DataFrame(
            {
                "customerID": self._ids(n),
                "gender": pick(["Male", "Female"], [0.505, 0.495]),
                "SeniorCitizen": (r.random(n) < 0.16).astype(int),
                "Partner": pick(["Yes", "No"], [0.48, 0.52]),
                "Dependents": pick(["Yes", "No"], [0.3, 0.7]),
                "tenure": tenure,
                "PhoneService": phone,
                "MultipleLines": np.where(
                    phone == "No", "No phone service", pick(["Yes", "No"], [0.42, 0.58])
                ),
                "InternetService": internet,
            }
        )
        charges = 20.0 + np.where(phone == "Yes", 5, 0) + np.where(internet == "DSL", 25, 0)
        charges = charges + np.where(internet == "Fiber optic", 50, 0)
        for col in ADDONS + STREAMING:
            yes = (r.random(n) < (0.35 if col in ADDONS else 0.45)) & has_net
            frame[col] = np.where(has_net, np.where(yes, "Yes", "No"), "No internet service")
            charges = charges + np.where(yes, 5.0 if col in ADDONS else 9.0, 0.0)
        frame["Contract"] = contract
        frame["PaperlessBilling"] = pick(["Yes", "No"], [0.59, 0.41])
        frame["PaymentMethod"] = payment
        frame["MonthlyCharges"] = np.round(charges + r.normal(0, 3, n), 2).clip(18.25, 118.75)
        total = frame["MonthlyCharges"] * frame["tenure"] * r.uniform(0.95, 1.05, n)
        frame["TotalCharges"] = np.where(frame["tenure"] > 0, np.round(total, 2), np.nan)
        return frame[COLUMNS]

    def churn_probability(self, frame: pd.DataFrame, market: Market | None = None) -> np.ndarray:
        """Probability that each customer leaves this month, before any retention offer."""
        m = market or self.market
        fiber = (frame["InternetService"] == "Fiber optic").to_numpy()
        month_to_month = (frame["Contract"] == "Month-to-month").to_numpy()
        logit = (
            m.intercept
            + m.month_to_month * month_to_month
            + m.two_year * (frame["Contract"] == "Two year").to_numpy()
            + m.fiber * fiber
            + m.long_contract_fiber * (fiber & ~month_to_month)
            + m.tenure_per_year * frame["tenure"].to_numpy() / 12
            + m.electronic_check * (frame["PaymentMethod"] == "Electronic check").to_numpy()
            + m.senior * frame["SeniorCitizen"].to_numpy()
            + m.support * (frame["TechSupport"] == "Yes").to_numpy()
            + m.charge_per_10 * (frame["MonthlyCharges"].to_numpy() - 65) / 10
        )
        return 1 / (1 + np.exp(-logit))

    def history(self, n: int) -> pd.DataFrame:
        """Labelled past customers (no retention offers) to train the first model on."""
        frame = self.new_customers(n, BEFORE_SHIFT, existing=True)
        churned = self.rng.random(n) < self.churn_probability(frame, BEFORE_SHIFT)
        frame["Churn"] = np.where(churned, "Yes", "No")
        return frame

    def close_month(self, offered: np.ndarray) -> pd.DataFrame:
        """Reveal who churned this month given the offers, then age the population.

        Returns ``customerID`` and ``Churn`` for every customer active this month.
        """
        active = self.customers
        p = self.churn_probability(active) * np.where(offered, 1 - self.offer_effect, 1.0)
        churned = self.rng.random(len(active)) < p
        outcome = pd.DataFrame(
            {"customerID": active["customerID"], "Churn": np.where(churned, "Yes", "No")}
        )
        stayed = active.loc[~churned].copy()
        stayed["tenure"] += 1
        stayed["TotalCharges"] = np.round(
            stayed["TotalCharges"].fillna(0) + stayed["MonthlyCharges"], 2
        )
        self.month += 1
        arrivals = self.new_customers(max(self.size - len(stayed), 0), self.market)
        self.customers = pd.concat([stayed, arrivals], ignore_index=True)
        return outcome


def as_source_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """Write TotalCharges as the IBM file does: a single space for customers not yet billed."""
    out = frame.copy()
    out["TotalCharges"] = out["TotalCharges"].map(lambda v: " " if pd.isna(v) else f"{v:.2f}")
    return out
