#include "lib/rpc/grpc_tls.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "lib/common/log.h"
#include "lib/config/config_dir.h"

namespace tern::rpc {
namespace {

constexpr char kSection[] = "grpc";

GrpcTlsSettings& Current() {
  static GrpcTlsSettings* settings = new GrpcTlsSettings;
  return *settings;
}

absl::StatusOr<std::string> ReadPem(const config::ConfigDir& dir, const config::IniFile& ini, const char* key) {
  const std::string name = ini.GetString(kSection, key, "");
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini [grpc] ", key, ": required with tls=true"));
  }
  const std::string path = dir.PathOf(name);
  absl::StatusOr<std::optional<std::string>> text = dir.Text(name);
  if (!text.ok() || !text->has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini [grpc] ", key, ": cannot read ", path));
  }
  if ((*text)->find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("tern.ini [grpc] ", key, ": ", path, " holds no PEM block"));
  }
  return **std::move(text);
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::unique_ptr<BIO, BioDeleter> MemBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioDeleter>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// gRPC only says "handshaker factory creation failed" (and then serves
// nothing) for a key that does not fit its certificate, so the pair is
// checked here, where the error can name the files.
absl::Status CheckPair(const std::string& cert_pem, const std::string& key_pem) {
  auto cert_bio = MemBio(cert_pem);
  std::unique_ptr<X509, X509Deleter> cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    return absl::InvalidArgumentError("tern.ini [grpc] tls_cert: not a PEM certificate");
  }
  auto key_bio = MemBio(key_pem);
  std::unique_ptr<EVP_PKEY, KeyDeleter> key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    return absl::InvalidArgumentError("tern.ini [grpc] tls_key: not an unencrypted PEM private key");
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError("tern.ini [grpc] tls_key: does not belong to the certificate in tls_cert");
  }
  return absl::OkStatus();
}

absl::Status CheckCa(const std::string& ca_pem) {
  auto bio = MemBio(ca_pem);
  std::unique_ptr<X509, X509Deleter> ca(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!ca) {
    return absl::InvalidArgumentError("tern.ini [grpc] tls_ca: not a PEM certificate");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GrpcTlsSettings> LoadGrpcTls(const config::ConfigDir& dir, bool serves) {
  absl::StatusOr<config::IniFile> ini = dir.Ini("tern.ini");
  if (!ini.ok()) {
    return ini.status();
  }
  GrpcTlsSettings s;
  absl::StatusOr<bool> enabled = ini->GetBool(kSection, "tls", false);
  if (!enabled.ok()) {
    return enabled.status();
  }
  absl::StatusOr<bool> client_auth = ini->GetBool(kSection, "tls_client_auth", false);
  if (!client_auth.ok()) {
    return client_auth.status();
  }
  s.enabled = *enabled;
  if (!s.enabled) {
    return s;
  }
  s.client_auth = *client_auth;
  s.server_name = ini->GetString(kSection, "tls_server_name", "");
  absl::StatusOr<std::string> ca = ReadPem(dir, *ini, "tls_ca");
  if (!ca.ok()) {
    return ca.status();
  }
  if (absl::Status st = CheckCa(*ca); !st.ok()) {
    return st;
  }
  s.ca_pem = *std::move(ca);
  // A server always needs its pair; a client only when servers demand one,
  // but a configured pair is checked either way rather than ignored.
  const bool has_pair = !ini->GetString(kSection, "tls_cert", "").empty() ||
                        !ini->GetString(kSection, "tls_key", "").empty();
  if (serves || s.client_auth || has_pair) {
    absl::StatusOr<std::string> cert = ReadPem(dir, *ini, "tls_cert");
    if (!cert.ok()) {
      return cert.status();
    }
    absl::StatusOr<std::string> key = ReadPem(dir, *ini, "tls_key");
    if (!key.ok()) {
      return key.status();
    }
    if (absl::Status st = CheckPair(*cert, *key); !st.ok()) {
      return st;
    }
    s.cert_pem = *std::move(cert);
    s.key_pem = *std::move(key);
  }
  return s;
}

void SetGrpcTls(GrpcTlsSettings settings) { Current() = std::move(settings); }

absl::Status ConfigureGrpcTls(const config::ConfigDir& dir, bool serves) {
  absl::StatusOr<GrpcTlsSettings> s = LoadGrpcTls(dir, serves);
  if (!s.ok()) {
    return s.status();
  }
  if (s->enabled) {
    log::Event(log::Level::kInfo, "grpc_tls",
               {{"client_auth", s->client_auth ? "required" : "off"},
                {"server_name", s->server_name.empty() ? "from target" : s->server_name}});
  }
  SetGrpcTls(*std::move(s));
  return absl::OkStatus();
}

const GrpcTlsSettings& GrpcTls() { return Current(); }

std::shared_ptr<grpc::ServerCredentials> ServerCredentials() {
  const GrpcTlsSettings& s = Current();
  if (!s.enabled) {
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions options(s.client_auth ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                          : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_root_certs = s.ca_pem;
  options.pem_key_cert_pairs.push_back({s.key_pem, s.cert_pem});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> ChannelCredentials() {
  const GrpcTlsSettings& s = Current();
  if (!s.enabled) {
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = s.ca_pem;
  options.pem_private_key = s.key_pem;
  options.pem_cert_chain = s.cert_pem;
  return grpc::SslCredentials(options);
}

}  // namespace tern::rpc
