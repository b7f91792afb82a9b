"""The dashboard's role table and sessions."""

from copml.keys import ROLES, Key
from copml.ui.auth import PERMISSIONS, Sessions, actor, allowed


def test_the_role_table_follows_design_section_7() -> None:
    assert all(roles <= set(ROLES) for _, roles in PERMISSIONS.values())
    assert not any(allowed("service", action) for action in PERMISSIONS)  # machines only
    assert [a for a in PERMISSIONS if allowed("viewer", a)] == ["read"]
    assert allowed("operator", "promote") and allowed("operator", "rollback")
    assert allowed("operator", "reviews") and not allowed("auditor", "reviews")
    assert allowed("auditor", "predictions") and allowed("auditor", "replay")
    assert allowed("scientist", "approve") and not allowed("scientist", "promote")
    assert not allowed("operator", "no such action")


def test_sessions_are_random_tokens_that_name_the_person() -> None:
    sessions = Sessions()
    key = Key("ab12cd34", "viewer", "vera")
    token = sessions.open({"telco-churn": key})
    found = sessions.get(token)
    assert found is not None and found.name == "vera" and actor(key) == "user:vera"
    assert actor(Key("ab12cd34", "viewer", None)) == "user:ab12cd34"
    assert found.csrf_ok(found.csrf) and not found.csrf_ok("forged") and not found.csrf_ok(None)
    assert sessions.get("guessed") is None
    sessions.close(token)
    assert sessions.get(token) is None
