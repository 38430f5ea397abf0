import type { HttpRouter } from "@effect/platform"

/** Whether a router path (`/v1/sessions/:id`, `/v1/models/*`) matches a request path. */
const pathMatches = (pattern: string, path: string): boolean => {
  const want = pattern.split("/")
  const got = path.split("/")
  for (let index = 0; index < want.length; index++) {
    const segment = want[index]!
    if (segment === "*") return true
    const actual = got[index]
    if (actual === undefined || (segment.startsWith(":") ? actual === "" : segment !== actual)) return false
  }
  return want.length === got.length
}

/** The order `Allow` lists methods in. */
const methodOrder = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

/**
 * The methods the server answers on a path (the query string ignored), as `Allow` lists them: read from `router`'s
 * own routes so they cannot drift apart; empty for a path it does not route. HEAD comes with GET, as the router
 * serves it from the GET route, and OPTIONS with every routed path (answered before the router).
 */
export const routeMethods = <E, R>(router: HttpRouter.HttpRouter<E, R>) => (url: string): ReadonlyArray<string> => {
  const path = url.split("?")[0] ?? "/"
  const methods = new Set<string>()
  for (const route of router.routes) {
    if (!pathMatches(route.path, path)) continue
    if (route.method === "*") return methodOrder
    methods.add(route.method)
    if (route.method === "GET") methods.add("HEAD")
  }
  if (methods.size > 0) methods.add("OPTIONS")
  return methodOrder.filter((method) => methods.has(method))
}
