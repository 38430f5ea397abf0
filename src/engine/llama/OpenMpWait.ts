/**
 * How the OpenMP threads of a native build (`weft build-native`, `GGML_OPENMP=ON`) wait: at ggml's barrier after every
 * operation of a decode (`#pragma omp barrier`) and between decodes.
 *
 * - `passive`: they sleep at once (`OMP_WAIT_POLICY=PASSIVE`). A thread that another process has pushed off its core
 *   costs the others a futex wake-up, never a time slice of spinning.
 * - `active`: they spin (`OMP_WAIT_POLICY=ACTIVE`); fastest on cores nobody else uses, and a collapse when another
 *   busy process shares them (each barrier then waits out a scheduler time slice).
 * - a number: libgomp spins that many times, then sleeps (`GOMP_SPINCOUNT`; libgomp's own default is 300,000, about
 *   3 ms, and 100 once it manages more threads than there are cores).
 *
 * libgomp reads these variables once, when the native library is loaded into the process, so they are set before
 * the first load and later changes have no effect. The prebuilt binaries have no OpenMP; there they change nothing.
 */
export type OpenMpWait = "passive" | "active" | { readonly spinCount: number }

/** The variables libgomp reads for its wait policy. */
export const openMpVariables = ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"] as const

/** Weft's default: measured in docs/performance.md ("Sharing the cores"). */
export const defaultOpenMpWait: OpenMpWait = "passive"

/** Where the wait policy in effect came from. */
export type OpenMpWaitSource = "setting" | "environment" | "default"

export interface OpenMpEnvironment {
  /** Variables to set in the process's environment before the native library loads (empty: leave it as it is). */
  readonly set: Readonly<Record<string, string>>
  /** Variables to remove, so a setting is not overridden by a variable of the environment. */
  readonly unset: ReadonlyArray<string>
  readonly source: OpenMpWaitSource
  /** The policy in effect, as the variables say it (`OMP_WAIT_POLICY=PASSIVE`), for logs and `/admin/stats`. */
  readonly description: string
}

const variablesOf = (wait: OpenMpWait): Record<string, string> =>
  wait === "passive"
    ? { OMP_WAIT_POLICY: "PASSIVE" }
    : wait === "active"
    ? { OMP_WAIT_POLICY: "ACTIVE" }
    : { GOMP_SPINCOUNT: String(wait.spinCount) }

const describe = (variables: Readonly<Record<string, string | undefined>>) =>
  openMpVariables.flatMap((name) => (variables[name] === undefined ? [] : [`${name}=${variables[name]}`])).join(" ")

/**
 * What to do to the environment `env` for `setting` (`undefined`: not configured): a configured policy replaces the
 * OpenMP variables of the environment; without one, variables the user set are kept as they are; with neither, Weft's
 * default applies.
 */
export const openMpEnvironment = (
  setting: OpenMpWait | undefined,
  env: Readonly<Record<string, string | undefined>>
): OpenMpEnvironment => {
  if (setting !== undefined) {
    const set = variablesOf(setting)
    return { set, unset: openMpVariables.filter((name) => !(name in set) && env[name] !== undefined), source: "setting", description: describe(set) }
  }
  if (openMpVariables.some((name) => env[name] !== undefined)) {
    return { set: {}, unset: [], source: "environment", description: describe(env) }
  }
  const set = variablesOf(defaultOpenMpWait)
  return { set, unset: [], source: "default", description: describe(set) }
}

/**
 * Applies `openMpEnvironment(setting, process.env)` to this process's environment (which child processes, such as
 * node-llama-cpp's binary test, inherit), and tells what is in effect. Only the first load of the native library in
 * a process reads it.
 */
export const applyOpenMpWait = (setting: OpenMpWait | undefined): OpenMpEnvironment => {
  const environment = openMpEnvironment(setting, process.env)
  for (const name of environment.unset) delete process.env[name]
  Object.assign(process.env, environment.set)
  return environment
}
