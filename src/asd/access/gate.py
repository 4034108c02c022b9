"""The Streamlit side of sign-in: who is using the page, the sign-in button, the banner.

Sign-in is on when the app's secrets hold an ``[auth]`` section (Streamlit's own
``st.login``/``st.user``/``st.logout`` with Authlib; ``.streamlit/secrets.toml``, or a
mounted file named by ``STREAMLIT_SECRETS_FILES``). Then every page asks visitors to sign
in, and a signed-in user's role comes from :func:`asd.access.load_policy`.

Without sign-in the app keeps its old behaviour only on a laptop, bound to 127.0.0.1
(everyone there may do everything). Bound to any other address it is an **open** app:
it scores and shows results, but publishes and acknowledges nothing, and a banner says
how to turn sign-in on.
"""

from __future__ import annotations

import streamlit as st

from .roles import AccessPolicy, Identity, load_policy

LOCAL_ADDRESSES = {"127.0.0.1", "localhost", "::1"}
HOW_TO_SIGN_IN = ("Turn sign-in on: give the app an `[auth]` section in its secrets (OpenID Connect: your "
                  "company's Keycloak, Entra ID or Google), see README, \"Sign-in and roles\".")


def sign_in_configured() -> bool:
    """Whether the app's secrets hold an ``[auth]`` section."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all: Streamlit raises its own not-found error
        return False


def bound_locally() -> bool:
    """Whether the app listens on the loopback address only (a laptop)."""
    return (st.get_option("server.address") or "") in LOCAL_ADDRESSES


def current_identity(policy: AccessPolicy | None = None) -> Identity:
    """Who is using the page (:class:`asd.access.Identity`), without drawing anything."""
    if sign_in_configured():
        if not st.user.is_logged_in:
            return Identity("anonymous", None, "anonymous")
        claims = st.user.to_dict()
        role = (policy or load_policy()).role_of(claims)
        name = str(claims.get("email") or claims.get("name") or claims.get("sub") or "signed-in user")
        return Identity(name, role, "sign-in", claims.get("email"))
    if bound_locally():
        return Identity("local user", "admin", "local")
    return Identity("anonymous", "viewer", "open")


def gate() -> Identity:
    """Run at the top of every page: with sign-in on, an anonymous visitor sees only the
    sign-in button and a user without a role is told so (the page stops there); a
    signed-in user sees who they are and a sign-out button in the sidebar; an open app
    shows the banner. Returns the identity for the page's checks."""
    identity = current_identity()
    if identity.via == "anonymous":
        st.title("Machine sound anomaly detector")
        st.info("Sign in with your company account to use this app.")
        st.button("Sign in", type="primary", on_click=st.login)
        st.stop()
    if identity.via == "sign-in":
        with st.sidebar:
            st.caption(f"Signed in as **{identity.name}** ({identity.role or 'no role'})")
            st.button("Sign out", on_click=st.logout)
        if identity.role is None:
            st.error(f"{identity.name} has no role in this app: ask its administrator for one "
                     "(viewer, operator or admin).")
            st.stop()
    if identity.via == "open":
        st.warning("Sign-in is off and this app is reachable from other machines: it scores clips and shows "
                   "results, but publishes no model version and acknowledges no alert. " + HOW_TO_SIGN_IN)
    return identity
