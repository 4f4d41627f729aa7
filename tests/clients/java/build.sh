#!/bin/sh
# build.sh PROTO_DIR OUT -- builds the Java orchestrator client of the tests
# from Debian's packages only (no Maven Central): protoc with grpc-java's
# plugin generates the stubs from proto/ (java_package dev.obhost.api.v1),
# javac compiles them with ObhostJavaClient.java. Prints the classpath to run
# it with; run it with -Djava.library.path=OUT/native. Needs:
# protobuf-compiler, protobuf-compiler-grpc-java-plugin, libgrpc-java,
# libprotobuf-java, libnetty-java, libnetty-tcnative-java and -jni,
# libperfmark-java, libgeronimo-annotation-1.3-spec-java and a JDK.
#
# TLS: Debian's netty 4.1.48 cannot do ALPN with the JDK's own TLS ("JDK
# provider does not support ALPN"), which gRPC needs; its OpenSSL provider
# (netty-tcnative) can. Debian ships that library as libnetty-tcnative.so
# while netty loads libnetty_tcnative.so (and refuses a link to another
# name), so a copy under that name goes in OUT/native.
set -eu
proto=$1
out=$2
here=$(dirname "$0")
jars=/usr/share/java
cp=""
for j in grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite \
    grpc-stub protobuf guava failureaccess perfmark-api gson jsr305 \
    error_prone_annotations geronimo-annotation-1.3-spec \
    netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks \
    netty-common netty-handler netty-handler-proxy netty-resolver netty-transport \
    netty-transport-native-unix-common netty-transport-native-epoll netty-tcnative; do
    if [ -f "$jars/$j.jar" ]; then
        cp="$cp${cp:+:}$jars/$j.jar"
    fi
done
mkdir -p "$out/gen" "$out/classes" "$out/native"
tcnative=/usr/lib/$(uname -m)-linux-gnu/jni/libnetty-tcnative.so
if [ -f "$tcnative" ]; then
    cp "$tcnative" "$out/native/libnetty_tcnative.so"
fi
protoc -I"$proto" -I/usr/include \
    --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin \
    --java_out="$out/gen" --grpc-java_out="$out/gen" \
    "$proto"/obhost/v1/*.proto
find "$out/gen" -name '*.java' > "$out/sources"
echo "$here/ObhostJavaClient.java" >> "$out/sources"
javac -nowarn -encoding UTF-8 -d "$out/classes" -cp "$cp" @"$out/sources" >&2
echo "$out/classes:$cp"
