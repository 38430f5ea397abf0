import { Effect, Option } from "effect"
import { CurrentPrincipal } from "./Principal.js"
import type { Principal } from "./Principal.js"

/** The caller of the current request; `None` when authentication is off or nothing provides `CurrentPrincipal`. */
export const currentPrincipal: Effect.Effect<Option.Option<Principal>> = Effect.map(Effect.serviceOption(CurrentPrincipal), Option.flatten)
