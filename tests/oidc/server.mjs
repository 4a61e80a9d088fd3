// A real OpenID provider for the sign-in tests: the certified `oidc-provider` package,
// configured with one confidential client, two users and the API's scopes.
//
// Usage: node server.mjs  (settings from the environment, see below). It listens on a
// free loopback port and prints one JSON line, {"issuer": "http://127.0.0.1:PORT"}, once
// it answers, so the test knows where it is. Stopped by the tests with SIGTERM.
//
//   OIDC_TEST_CLIENT_ID, OIDC_TEST_CLIENT_SECRET  the test client
//   OIDC_TEST_REDIRECT_URIS                       space-separated allowed redirect URIs
//   OIDC_TEST_POST_LOGOUT_URIS                    space-separated allowed post-logout URIs
//   OIDC_TEST_AUDIENCE                            the API's audience (access tokens are JWTs for it)
//
// Users (password "correct horse"): "officer" may score, "visitor" may only monitor.
// Access tokens carry the granted API scopes in `scope` and the user's `roles`.
import { generateKeyPairSync, randomBytes, webcrypto } from 'node:crypto';
import http from 'node:http';
import { URLSearchParams } from 'node:url';

// Node 18 (Debian 12's nodejs) has WebCrypto only as node:crypto's webcrypto; the
// provider's JOSE library wants it global, so it is imported after this line.
globalThis.crypto ??= webcrypto;
const { default: Provider } = await import('oidc-provider');

const API_SCOPES = 'score feedback monitor metrics';
const PASSWORD = 'correct horse';
const USERS = {
  officer: { name: 'Olivia Officer', email: 'officer@bank.test', scopes: ['score'], roles: ['credit-officer'] },
  visitor: { name: 'Victor Visitor', email: 'visitor@bank.test', scopes: ['monitor'], roles: ['analyst'] },
};

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const page = (title, body) => `<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>${escape(title)}</title></head><body><h1>${escape(title)}</h1>${body}</body></html>`;

function configuration(audience) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    clients: [{
      client_id: env('OIDC_TEST_CLIENT_ID'),
      client_secret: env('OIDC_TEST_CLIENT_SECRET'),
      redirect_uris: env('OIDC_TEST_REDIRECT_URIS').split(' '),
      post_logout_redirect_uris: (process.env.OIDC_TEST_POST_LOGOUT_URIS || '').split(' ').filter(Boolean),
      grant_types: ['authorization_code'],
      response_types: ['code'],
    }],
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'test-key', use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: { openid: ['sub'], profile: ['name'], email: ['email'] },
    pkce: { required: () => true }, // the app must use PKCE even as a confidential client
    features: {
      devInteractions: { enabled: false }, // our own login page checks the password
      rpInitiatedLogout: { enabled: true, logoutSource },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => audience,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: API_SCOPES, audience, accessTokenFormat: 'jwt', accessTokenTTL: 3600,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: async (ctx, token) => ({ roles: USERS[token.accountId]?.roles ?? [] }),
    findAccount: async (ctx, sub) => (USERS[sub] ? {
      accountId: sub,
      claims: async () => ({ sub, name: USERS[sub].name, email: USERS[sub].email }),
    } : undefined),
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<p id="op-error">${escape(out.error)}: ${escape(out.error_description || '')}</p>`);
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  };
}

async function logoutSource(ctx, form) {
  ctx.body = page('Sign out of the identity provider?', `${form}
<button id="op-logout" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>`);
}

function loginForm(uid, problem) {
  return page('Bank sign-in', `${problem ? `<p id="op-problem">${escape(problem)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}">
<label>User <input id="op-login" name="login" autocomplete="off"></label>
<label>Password <input id="op-password" name="password" type="password"></label>
<button id="op-submit" type="submit">Sign in</button></form>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Login and consent in one step: a bank's SSO does not ask its officers to consent.
async function finishLogin(provider, req, res, details, login) {
  const grant = new provider.Grant({ accountId: login, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope.split(' ').filter((s) => ['openid', 'profile', 'email'].includes(s)).join(' '));
  const requested = new Set(details.params.scope.split(' '));
  const allowed = USERS[login].scopes.filter((s) => requested.has(s));
  const refused = API_SCOPES.split(' ').filter((s) => requested.has(s) && !allowed.includes(s));
  const audience = process.env.OIDC_TEST_AUDIENCE;
  grant.addResourceScope(audience, allowed.join(' '));
  if (refused.length) grant.rejectResourceScope(audience, refused.join(' ')); // not theirs
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { login: { accountId: login }, consent: { grantId } },
    { mergeWithLastSubmission: false });
}

async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(loginForm(details.uid));
    return;
  }
  const form = await readForm(req);
  const login = form.get('login') || '';
  if (!Object.hasOwn(USERS, login) || form.get('password') !== PASSWORD) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      .end(loginForm(details.uid, 'Unknown user or wrong password.'));
    return;
  }
  await finishLogin(provider, req, res, details, login);
}

function main() {
  let provider;
  const server = http.createServer((req, res) => {
    if (req.url.startsWith('/interaction/')) {
      interaction(provider, req, res).catch((error) => {
        res.writeHead(400, { 'content-type': 'text/plain' }).end(String(error.message));
      });
      return;
    }
    provider.callback()(req, res);
  });
  server.listen(0, '127.0.0.1', () => {
    const issuer = `http://127.0.0.1:${server.address().port}`;
    provider = new Provider(issuer, configuration(env('OIDC_TEST_AUDIENCE')));
    process.stdout.write(`${JSON.stringify({ issuer })}\n`);
  });
  process.on('SIGTERM', () => {
    server.closeAllConnections(); // the browser's keep-alive connections would hold it open
    server.close(() => process.exit(0));
  });
}

main();
