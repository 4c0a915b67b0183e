"""What the pymongo client scripts share: their common arguments (URI, CA
file, token, database) and a MongoClient signed in with MONGODB-OIDC by a
callback that returns the given token."""
import argparse


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("uri")
    p.add_argument("--ca", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--db", default="app")
    return p


def connect(a, **options):
    """A MongoClient for the parsed arguments `a`; `options` are passed on."""
    from pymongo import MongoClient
    from pymongo.auth_oidc import OIDCCallback, OIDCCallbackContext, OIDCCallbackResult

    class Token(OIDCCallback):
        def fetch(self, context: OIDCCallbackContext) -> OIDCCallbackResult:
            return OIDCCallbackResult(access_token=a.token, expires_in_seconds=3600)

    return MongoClient(a.uri, tls=True, tlsCAFile=a.ca, authMechanism="MONGODB-OIDC",
                       authMechanismProperties={"OIDC_CALLBACK": Token()}, **options)
