"""``{{ user|person }}``: a person where it matters who they are (who asked, who approved).

It reads "Display Name (username · #ab12cd)": the display name is the full name, or the
username when there is none; the username is the account's unique name; the short id is
``short_id(user)``. Each part is bidi-isolated, so a right-to-left name, or a direction
override hidden in a full name, cannot reorder the parts after it.
"""

import hashlib

from django import template
from django.utils.html import format_html

register = template.Library()


def short_id(user) -> str:
    """Six hex digits of SHA-256 over a fixed label and the account's primary key: the same on
    every page for the account's whole life (primary keys never change, usernames may), and
    unlike the key itself it does not count the platform's accounts. Two accounts share one with
    a chance of one in 16.7 million; the username stays the unique name."""
    return hashlib.sha256(f"neocloud.person:{user.pk}".encode()).hexdigest()[:6]


@register.filter
def person(user):
    if user is None:
        return ""
    return format_html('<span class="person"><bdi>{}</bdi> (<bdi>{}</bdi> · #{})</span>',
                       user.get_full_name() or user.username, user.username, short_id(user))
