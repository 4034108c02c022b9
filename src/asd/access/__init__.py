"""Who may do what (issue 31): sign-in through OpenID Connect (Streamlit's ``st.login``)
and three roles. A page asks "may this user do X?" (:func:`may`, :func:`require`) and never
reads claims itself.

- :mod:`.roles`: the roles, the actions each allows, and how a signed-in user's claims
  (a ``groups`` or ``roles`` claim, or an e-mail allow-list) give a role; pure.
- :mod:`.gate`: the Streamlit side: who is using the page (signed in, a laptop's local
  user, or an anonymous visitor of an open app), the sign-in button, the banner.
- :mod:`.guarded`: the writing operations the pages offer (publish a model version,
  acknowledge an alert, mark a baseline, change a rule), each refusing a user whose role
  does not allow it and recording who did it.
"""

from .roles import ACTIONS, ROLES, AccessDenied, AccessPolicy, Identity, load_policy, may, require

__all__ = ["ACTIONS", "ROLES", "AccessDenied", "AccessPolicy", "Identity", "load_policy", "may", "require"]
