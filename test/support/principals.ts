import type { Principal, UsageLimits } from "../../src/identity/Principal.js"

/** A caller with key `keyId` of tenant `acme` and these limits. */
export const testPrincipal = (keyId: string, keyLimits: UsageLimits, tenantLimits: UsageLimits): Principal => ({
  keyId,
  keyName: keyId,
  tenant: "acme",
  scopes: ["inference"],
  keyLimits,
  tenantLimits
})
