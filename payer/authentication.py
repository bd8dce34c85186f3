from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from payer.services.auth import access_token_resolve


class BearerTokenAuthentication(BaseAuthentication):
    """Authenticate a SMART Backend Services bearer token.

    ``request.auth`` is the ``AccessToken`` (with ``.client`` and
    ``.client.organization``); ``request.user`` is the ``SmartClient``. The caller's
    identity comes from the token alone, never from the request body or headers.
    """

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != b"bearer":
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        token = access_token_resolve(raw_token=header[1].decode("latin-1"))
        if token is None:
            raise exceptions.AuthenticationFailed("The access token is invalid or has expired.")
        return token.client, token

    def authenticate_header(self, request) -> str:
        # RFC 6750 section 3: a 401 carries WWW-Authenticate naming the scheme. Section 3.1:
        # a request that lacked credentials gets no error code; a bad token is invalid_token.
        header = get_authorization_header(request).split()
        if header and header[0].lower() == b"bearer":
            return 'Bearer realm="payer", error="invalid_token"'
        return 'Bearer realm="payer"'
